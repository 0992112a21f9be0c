//! The `docker_hosts` table: the hosts, direct or served by an agent, read through a
//! short-lived cache on the command and Docker API paths, with their two label sets (the
//! admin's and the one their agent reports), the paged scan behind label selectors and, for a
//! host that enrolled itself, its token, machine and approval (the enrolment transaction
//! itself is in `enrolment_tokens.rs`).
//!
//! Owns: its SQL and the host rows (TLS keys only as ciphertext). Must not: reach a host or
//! decide what a selector means (the scan only applies the substrings it is given).

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{map_unique, new_id, now_ms, Backend, Bind, Result, Store, StoreError};
use crate::labels::{self, Labels};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMode {
    Direct,
    Agent,
}

impl ConnectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMode::Direct => "direct",
            ConnectionMode::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectionMode> {
        match s {
            "direct" => Some(ConnectionMode::Direct),
            "agent" => Some(ConnectionMode::Agent),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewHost {
    pub name: String,
    pub connection_mode: ConnectionMode,
    pub docker_url: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    /// Ciphertext (see `crypto`).
    pub tls_key_enc: Option<String>,
    pub tls_server_name: Option<String>,
    /// The admin's labels (checked by the caller).
    pub labels: Labels,
}

impl std::fmt::Debug for NewHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewHost")
            .field("name", &self.name)
            .field("connection_mode", &self.connection_mode)
            .field("docker_url", &self.docker_url)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub connection_mode: ConnectionMode,
    pub docker_url: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key_enc: Option<String>,
    pub tls_server_name: Option<String>,
    /// `docker_agents.id` of the host's agent.
    pub agent_ref: Option<String>,
    /// The external `agent_id` of the host's agent.
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The admin's labels (written with the host).
    pub labels: Labels,
    /// The labels the host's agent reported when it last authenticated.
    pub agent_labels: Labels,
    /// The enrolment token the host last enrolled with; `None` for hosts an admin created.
    pub enrolment_token_id: Option<String>,
    /// The hash of the machine id the host enrolled from (never shown whole).
    pub machine_id: Option<String>,
    /// When the host started waiting for an admin's approval; `None`: not waiting.
    pub pending_since: Option<i64>,
    /// The region the host is in (an admin's setting).
    pub region: Option<String>,
}

impl Host {
    /// Waiting for an admin's approval: no command or stream reaches it.
    pub fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("connection_mode", &self.connection_mode)
            .field("docker_url", &self.docker_url)
            .field("agent_id", &self.agent_id)
            .field("pending", &self.is_pending())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub(super) const HOST_COLS: &'static str = "h.id, h.name, h.connection_mode, h.docker_url, h.tls_ca, h.tls_cert, \
        h.tls_key_enc, h.tls_server_name, h.agent_id AS agent_ref, a.agent_id AS agent_name, h.created_at, h.updated_at, \
        h.labels, h.agent_labels, h.enrolment_token_id, h.machine_id, h.pending_since, h.region";

    pub(super) fn host_row(r: &AnyRow) -> Result<Host> {
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
            labels: labels::from_json(r.try_get::<Option<String>, _>("labels")?.as_deref()),
            agent_labels: labels::from_json(
                r.try_get::<Option<String>, _>("agent_labels")?.as_deref(),
            ),
            enrolment_token_id: r.try_get("enrolment_token_id")?,
            machine_id: r.try_get("machine_id")?,
            pending_since: r.try_get("pending_since")?,
            region: r.try_get("region")?,
        })
    }

    pub async fn create_host(&self, h: &NewHost) -> Result<Host> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO docker_hosts (id, name, connection_mode, docker_url, tls_ca, tls_cert, tls_key_enc, \
             tls_server_name, created_at, updated_at, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        .bind((!h.labels.is_empty()).then(|| labels::to_json(&h.labels)))
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

    /// The hosts with these ids that exist, in no particular order.
    pub async fn get_hosts(&self, ids: &[String]) -> Result<Vec<Host>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {} FROM docker_hosts h LEFT JOIN docker_agents a ON a.id = h.agent_id WHERE h.id IN ({})",
                Self::HOST_COLS,
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(Self::host_row(&r)?);
            }
        }
        Ok(out)
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
    /// returned), the admin's labels included; the agent's labels are left as they are.
    pub async fn update_host(&self, h: &Host) -> Result<Host> {
        let r = sqlx::query(
            "UPDATE docker_hosts SET name = $1, connection_mode = $2, docker_url = $3, tls_ca = $4, tls_cert = $5, \
             tls_key_enc = $6, tls_server_name = $7, agent_id = $8, updated_at = $9, labels = $10, region = $11 \
             WHERE id = $12",
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
        .bind((!h.labels.is_empty()).then(|| labels::to_json(&h.labels)))
        .bind(&h.region)
        .bind(&h.id)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a host with this name"))?;
        self.forget(super::CacheDrop::Host(h.id.clone()));
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
        self.forget(super::CacheDrop::Host(id.to_string()));
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Ends a host's wait for approval. Returns the host; `Conflict` when it was not waiting,
    /// `NotFound` when there is no such host.
    pub async fn approve_host(&self, id: &str) -> Result<Host> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE docker_hosts SET pending_since = NULL, updated_at = $1 WHERE id = $2 AND pending_since IS NOT NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.forget(super::CacheDrop::Host(id.to_string()));
        let host = self.get_host(id).await?.ok_or(StoreError::NotFound)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "host {id:?} is not waiting for approval"
            )));
        }
        Ok(host)
    }

    /// Removes a host that waits for approval and revokes its agents, in one transaction.
    /// Returns the agents it revoked; `Conflict` when the host is not waiting (any more),
    /// `NotFound` when there is no such host.
    pub async fn reject_host(&self, id: &str) -> Result<Vec<super::Agent>> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let pending: Option<Option<i64>> =
            sqlx::query("SELECT pending_since FROM docker_hosts WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get("pending_since"))
                .transpose()?;
        match pending {
            None => return Err(StoreError::NotFound),
            Some(None) => {
                return Err(StoreError::Conflict(format!(
                    "host {id:?} is not waiting for approval: delete it with DELETE /api/v1/hosts/{{id}}"
                )))
            }
            Some(Some(_)) => {}
        }
        let agents = Self::revoke_live_agents_of(&mut tx, id, now).await?;
        sqlx::query("DELETE FROM docker_hosts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget(super::CacheDrop::Hosts);
        Ok(agents)
    }

    /// Stores the labels the agent of `host_id` reported. Writes only when they changed;
    /// returns whether they did.
    pub async fn set_agent_labels(&self, host_id: &str, agent_labels: &Labels) -> Result<bool> {
        let text = labels::to_json(agent_labels);
        let r = sqlx::query(
            "UPDATE docker_hosts SET agent_labels = $1 WHERE id = $2 AND COALESCE(agent_labels, '{}') <> $3",
        )
        .bind((!agent_labels.is_empty()).then(|| text.clone()))
        .bind(host_id)
        .bind(&text)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            self.forget(super::CacheDrop::Host(host_id.to_string()));
        }
        Ok(r.rows_affected() > 0)
    }

    /// One batch of the scan behind label selectors: at most `limit` hosts whose name sorts
    /// after `after`, in name order, keeping only those whose stored label sets contain, for
    /// every list in `must_contain`, one of its strings (in the admin's or the agent's set),
    /// and, with `name_contains` (lowercase), whose lowercased name contains it. The caller matches the selector itself on what comes back; this only narrows the rows
    /// in SQL. Memory stays bounded by `limit`.
    pub async fn scan_hosts(
        &self,
        after: Option<&str>,
        must_contain: &[Vec<String>],
        name_contains: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Host>> {
        let mut sql = format!(
            "SELECT {} FROM docker_hosts h LEFT JOIN docker_agents a ON a.id = h.agent_id WHERE 1 = 1",
            Self::HOST_COLS
        );
        let mut binds = Vec::new();
        if let Some(a) = after {
            binds.push(Bind::Text(a.to_string()));
            sql.push_str(&format!(" AND h.name > ${}", binds.len()));
        }
        for any in must_contain.iter().filter(|a| !a.is_empty()) {
            let mut ors = Vec::new();
            for needle in any {
                let pattern = format!("%{needle}%");
                binds.push(Bind::Text(pattern.clone()));
                binds.push(Bind::Text(pattern));
                ors.push(format!(
                    "h.labels LIKE ${} OR h.agent_labels LIKE ${}",
                    binds.len() - 1,
                    binds.len()
                ));
            }
            sql.push_str(&format!(" AND ({})", ors.join(" OR ")));
        }
        // Only an ASCII needle narrows in SQL: SQLite's LOWER folds ASCII only, and the
        // caller decides on the full Unicode lowercase anyway.
        if let Some(n) = name_contains.filter(|n| !n.is_empty() && n.is_ascii()) {
            binds.push(Bind::Text(format!("%{}%", like_escape(&n.to_lowercase()))));
            sql.push_str(&format!(
                " AND LOWER(h.name) LIKE ${} ESCAPE '\\'",
                binds.len()
            ));
        }
        binds.push(Bind::Int(limit.clamp(1, 10_000)));
        sql.push_str(&format!(" ORDER BY h.name LIMIT ${}", binds.len()));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::Text(s) => q.bind(s),
                Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(Self::host_row).collect()
    }
}

/// `s` with LIKE's wildcards (`%`, `_`) and the escape character (`\`) taken literally.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
