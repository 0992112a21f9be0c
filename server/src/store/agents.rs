//! The `docker_agents` table: enrolments (token hashes, allowlists, settings), which host
//! each agent is bound to, and the last known state of its session.
//!
//! Owns: its SQL and the agent rows (token hashes, signing keys only as ciphertext). Must not:
//! decide whether a token is valid (`auth` does).

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{
    json_text, map_unique, new_id, now_ms, parse_json, Backend, Result, Store, StoreError,
};

/// A hash that prints masked.
struct Masked;
impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub agent_id: String,
    pub host_id: String,
    pub token_hash: String,
    pub token_expires_at: Option<i64>,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for NewAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAgent")
            .field("agent_id", &self.agent_id)
            .field("host_id", &self.host_id)
            .finish()
    }
}

#[derive(Clone, PartialEq)]
pub struct Agent {
    /// Internal row id.
    pub id: String,
    /// The id the agent authenticates with.
    pub agent_id: String,
    pub host_id: Option<String>,
    pub auth_token_hash: String,
    pub token_expires_at: Option<i64>,
    pub prev_token_hash: Option<String>,
    pub prev_token_valid_until: Option<i64>,
    pub revoked_at: Option<i64>,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// Per-agent overrides of the server's settings, in seconds.
    pub heartbeat_interval: Option<i64>,
    pub command_timeout: Option<i64>,
    pub status: String,
    pub session_id: Option<String>,
    pub version: Option<String>,
    /// The target triple the agent reported at its last auth (protocol version 3).
    pub target: Option<String>,
    pub capabilities: Vec<String>,
    pub health: Value,
    pub rtt_ms: Option<f64>,
    pub last_heartbeat: Option<i64>,
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The HMAC signing key, encrypted at rest. None: the agent does not sign.
    pub signing_key_enc: Option<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("agent_id", &self.agent_id)
            .field("host_id", &self.host_id)
            .field("auth_token_hash", &Masked)
            .field("status", &self.status)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A partial update of an agent's settings; `None` keeps the current value. For the
/// intervals, `Some(None)` clears the override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSettingsPatch {
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
    pub heartbeat_interval: Option<Option<i64>>,
    pub command_timeout: Option<Option<i64>>,
}

impl Store {
    pub(super) const AGENT_COLS: &'static str = "id, agent_id, host_id, auth_token_hash, token_expires_at, prev_token_hash, \
        prev_token_valid_until, revoked_at, allowed_cidrs, heartbeat_interval, command_timeout, status, session_id, \
        version, target, capabilities, health, rtt_ms, last_heartbeat, connected_at, disconnected_at, created_at, updated_at, signing_key_enc";

    pub(super) fn agent_row(r: &AnyRow) -> Result<Agent> {
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
            target: r.try_get("target")?,
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
        self.forget(super::CacheDrop::Hosts);
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

    /// Revokes a host's live agents inside the caller's transaction (a rejected host, a
    /// machine that enrols again) and returns them as they were, so their sessions can be ended.
    pub(super) async fn revoke_live_agents_of(
        conn: &mut sqlx::AnyConnection,
        host_id: &str,
        now: i64,
    ) -> Result<Vec<Agent>> {
        let sql = format!(
            "SELECT {} FROM docker_agents WHERE host_id = $1 AND revoked_at IS NULL",
            Self::AGENT_COLS
        );
        let agents = sqlx::query(&sql)
            .bind(host_id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(Self::agent_row)
            .collect::<Result<Vec<_>>>()?;
        sqlx::query(
            "UPDATE docker_agents SET revoked_at = $1, status = 'revoked', prev_token_hash = NULL, \
             prev_token_valid_until = NULL, updated_at = $2 WHERE host_id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(now)
        .bind(host_id)
        .execute(&mut *conn)
        .await?;
        Ok(agents)
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

    /// The agents of these hosts, in chunks of 500 ids per query (for plans over a fleet).
    pub async fn agents_of_hosts(&self, host_ids: &[String]) -> Result<Vec<Agent>> {
        let mut out = Vec::new();
        for chunk in host_ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {} FROM docker_agents WHERE host_id IN ({}) ORDER BY agent_id",
                Self::AGENT_COLS,
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(Self::agent_row(&r)?);
            }
        }
        Ok(out)
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
        self.forget(super::CacheDrop::Hosts);
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

    /// An agent authenticated: a new session, with the target triple it reported (`None`
    /// from agents before protocol 3). One statement: it runs once per handshake.
    pub async fn agent_connected(
        &self,
        id: &str,
        session_id: &str,
        server_id: &str,
        version: &str,
        capabilities: &[String],
        target: Option<&str>,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE docker_agents SET status = 'online', session_id = $1, server_id = $2, version = $3, \
             capabilities = $4, connected_at = $5, last_heartbeat = $6, updated_at = $7, target = $8 \
             WHERE id = $9",
        )
        .bind(session_id)
        .bind(server_id)
        .bind(version)
        .bind(serde_json::to_string(capabilities).unwrap_or_else(|_| "[]".into()))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(target)
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
}
