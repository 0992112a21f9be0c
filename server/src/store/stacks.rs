//! The `stacks`, `stack_versions`, `stack_hosts` and `registries` tables: compose stacks,
//! every version of their file, their state on each host, and registry credentials.
//!
//! Owns: their SQL and rows. Must not: see a compose file, an env or a password in clear
//! (they arrive here as ciphertext, see `crypto`), or decide anything about a deployment.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{
    json_text, map_unique, new_id, now_ms, parse_json, Backend, Result, Store, StoreError,
};

/// A stack and its current version.
#[derive(Debug, Clone, PartialEq)]
pub struct StackRecord {
    pub name: String,
    pub version: i64,
    /// The targets of the current version, as the request gave them.
    pub targets: Value,
    /// Set while the stack is being removed: `{"volumes": bool}`.
    pub removing: Option<Value>,
    /// The rollout of the last change.
    pub rollout_id: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One version of a stack's file. `Debug` leaves the ciphertexts out.
#[derive(Clone, PartialEq)]
pub struct StackVersion {
    pub stack: String,
    pub version: i64,
    pub compose_enc: String,
    pub env_enc: String,
    pub created_by: String,
    pub created_at: i64,
}

impl std::fmt::Debug for StackVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackVersion")
            .field("stack", &self.stack)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A stack on one host.
#[derive(Debug, Clone, PartialEq)]
pub struct StackHost {
    pub stack: String,
    pub host_id: String,
    pub wanted_version: i64,
    /// The last version that was applied completely.
    pub applied_version: Option<i64>,
    /// `pending`, `deploying`, `deployed`, `failed` or `removing`.
    pub state: String,
    /// The error of the last failed run (`{"code","message"}`).
    pub error: Option<Value>,
    pub rollout_id: Option<String>,
    pub updated_at: i64,
}

/// A new version to store.
#[derive(Clone)]
pub struct NewStackVersion<'a> {
    pub name: &'a str,
    pub targets: &'a Value,
    pub compose_enc: &'a str,
    pub env_enc: &'a str,
    pub by: &'a str,
    pub host_ids: &'a [String],
}

/// Stored registry credentials (the password as ciphertext). `Debug` leaves it out.
#[derive(Clone, PartialEq)]
pub struct RegistryRecord {
    pub id: String,
    /// The registry's address as image references name it: `registry.example:5000`.
    pub server: String,
    pub username: String,
    pub password_enc: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for RegistryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRecord")
            .field("id", &self.id)
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn stack_row(r: &AnyRow) -> Result<StackRecord> {
    Ok(StackRecord {
        name: r.try_get("name")?,
        version: r.try_get("version")?,
        targets: parse_json(r.try_get("targets")?),
        removing: r
            .try_get::<Option<String>, _>("removing")?
            .map(|s| parse_json(Some(s))),
        rollout_id: r.try_get("rollout_id")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn host_row(r: &AnyRow) -> Result<StackHost> {
    Ok(StackHost {
        stack: r.try_get("stack")?,
        host_id: r.try_get("host_id")?,
        wanted_version: r.try_get("wanted_version")?,
        applied_version: r.try_get("applied_version")?,
        state: r.try_get("state")?,
        error: r
            .try_get::<Option<String>, _>("error")?
            .map(|s| parse_json(Some(s))),
        rollout_id: r.try_get("rollout_id")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn registry_row(r: &AnyRow) -> Result<RegistryRecord> {
    Ok(RegistryRecord {
        id: r.try_get("id")?,
        server: r.try_get("server")?,
        username: r.try_get("username")?,
        password_enc: r.try_get("password_enc")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const STACK_COLS: &str =
    "name, version, targets, removing, rollout_id, created_by, created_at, updated_at";
const HOST_COLS: &str =
    "stack, host_id, wanted_version, applied_version, state, error, rollout_id, updated_at";

impl Store {
    /// Stores a new version of stack `v.name` (creating the stack at version 1) and marks
    /// each of its hosts `pending` for it. Returns the stack as it is now.
    ///
    /// Errors: `Conflict` while the stack is being removed.
    pub async fn save_stack_version(&self, v: &NewStackVersion<'_>) -> Result<StackRecord> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let sql = format!("SELECT {STACK_COLS} FROM stacks WHERE name = $1");
        let existing = match sqlx::query(&sql)
            .bind(v.name)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(r) => Some(stack_row(&r)?),
            None => None,
        };
        if existing.as_ref().is_some_and(|s| s.removing.is_some()) {
            return Err(StoreError::Conflict(format!(
                "stack {} is being removed",
                v.name
            )));
        }
        let version = existing.as_ref().map_or(1, |s| s.version + 1);
        if existing.is_some() {
            sqlx::query(
                "UPDATE stacks SET version = $1, targets = $2, updated_at = $3 WHERE name = $4",
            )
            .bind(version)
            .bind(json_text(v.targets))
            .bind(now)
            .bind(v.name)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO stacks (name, version, targets, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(v.name)
            .bind(version)
            .bind(json_text(v.targets))
            .bind(v.by)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_unique(e, "stack"))?;
        }
        sqlx::query(
            "INSERT INTO stack_versions (stack, version, compose_enc, env_enc, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(v.name)
        .bind(version)
        .bind(v.compose_enc)
        .bind(v.env_enc)
        .bind(v.by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for h in v.host_ids {
            sqlx::query(
                "INSERT INTO stack_hosts (stack, host_id, wanted_version, state, updated_at) \
                 VALUES ($1, $2, $3, 'pending', $4) \
                 ON CONFLICT (stack, host_id) DO UPDATE SET wanted_version = excluded.wanted_version, \
                 state = 'pending', error = NULL, updated_at = excluded.updated_at",
            )
            .bind(v.name)
            .bind(h)
            .bind(version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.get_stack(v.name).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_stack(&self, name: &str) -> Result<Option<StackRecord>> {
        let sql = format!("SELECT {STACK_COLS} FROM stacks WHERE name = $1");
        match sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        {
            Some(r) => Ok(Some(stack_row(&r)?)),
            None => Ok(None),
        }
    }

    /// Every stack, by name.
    pub async fn list_stacks(&self) -> Result<Vec<StackRecord>> {
        let sql = format!("SELECT {STACK_COLS} FROM stacks ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(stack_row).collect()
    }

    pub async fn get_stack_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<StackVersion>> {
        let row = sqlx::query(
            "SELECT stack, version, compose_enc, env_enc, created_by, created_at \
             FROM stack_versions WHERE stack = $1 AND version = $2",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(StackVersion {
            stack: r.try_get("stack")?,
            version: r.try_get("version")?,
            compose_enc: r.try_get("compose_enc")?,
            env_enc: r.try_get("env_enc")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
        }))
    }

    /// The stack's hosts, by host id.
    pub async fn stack_hosts(&self, name: &str) -> Result<Vec<StackHost>> {
        let sql = format!("SELECT {HOST_COLS} FROM stack_hosts WHERE stack = $1 ORDER BY host_id");
        let rows = sqlx::query(&sql).bind(name).fetch_all(&self.pool).await?;
        rows.iter().map(host_row).collect()
    }

    /// Records how a run on a host stands. `applied` is set only when the run finished the
    /// version; `error` is cleared unless given.
    pub async fn set_stack_host(
        &self,
        name: &str,
        host_id: &str,
        state: &str,
        applied: Option<i64>,
        error: Option<&Value>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE stack_hosts SET state = $1, applied_version = COALESCE($2, applied_version), \
             error = $3, updated_at = $4 WHERE stack = $5 AND host_id = $6",
        )
        .bind(state)
        .bind(applied)
        .bind(error.map(json_text))
        .bind(now_ms())
        .bind(name)
        .bind(host_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Names the rollout of the stack's last change, on the stack and its hosts.
    pub async fn set_stack_rollout(&self, name: &str, rollout_id: &str) -> Result<()> {
        for sql in [
            "UPDATE stacks SET rollout_id = $1 WHERE name = $2",
            "UPDATE stack_hosts SET rollout_id = $1 WHERE stack = $2",
        ] {
            sqlx::query(sql)
                .bind(rollout_id)
                .bind(name)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Marks the stack and its hosts as being removed. Errors: `NotFound`.
    pub async fn mark_stack_removing(&self, name: &str, volumes: bool) -> Result<StackRecord> {
        let now = now_ms();
        let r = sqlx::query("UPDATE stacks SET removing = $1, updated_at = $2 WHERE name = $3")
            .bind(serde_json::json!({ "volumes": volumes }).to_string())
            .bind(now)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("UPDATE stack_hosts SET state = 'removing', error = NULL, updated_at = $1 WHERE stack = $2")
            .bind(now)
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.get_stack(name).await?.ok_or(StoreError::NotFound)
    }

    /// Forgets a host of a stack (its part of the stack was removed).
    pub async fn remove_stack_host(&self, name: &str, host_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM stack_hosts WHERE stack = $1 AND host_id = $2")
            .bind(name)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a stack that is being removed once no host is left. Returns whether it went.
    pub async fn delete_stack_if_done(&self, name: &str) -> Result<bool> {
        let r = sqlx::query(
            "DELETE FROM stacks WHERE name = $1 AND removing IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM stack_hosts WHERE stack = $2)",
        )
        .bind(name)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Stores registry credentials. Errors: `Conflict` when the server has some already.
    pub async fn create_registry(
        &self,
        server: &str,
        username: &str,
        password_enc: &str,
        by: &str,
    ) -> Result<RegistryRecord> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO registries (id, server, username, password_enc, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(server)
        .bind(username)
        .bind(password_enc)
        .bind(by)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "registry"))?;
        self.get_registry(&id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_registry(&self, id: &str) -> Result<Option<RegistryRecord>> {
        let row = sqlx::query("SELECT * FROM registries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(registry_row).transpose()
    }

    /// The credentials for registry `server`, if stored.
    pub async fn registry_for(&self, server: &str) -> Result<Option<RegistryRecord>> {
        let row = sqlx::query("SELECT * FROM registries WHERE server = $1")
            .bind(server)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(registry_row).transpose()
    }

    pub async fn list_registries(&self) -> Result<Vec<RegistryRecord>> {
        let rows = sqlx::query("SELECT * FROM registries ORDER BY server")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(registry_row).collect()
    }

    /// Errors: `NotFound`.
    pub async fn delete_registry(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM registries WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
