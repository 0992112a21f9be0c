//! The `enrolment_tokens` table, and the one transaction that uses a token: an agent's
//! enrolment, which counts the use, creates (or takes back) the host and creates its agent.
//!
//! Owns: its SQL and the token rows (hashes only), and the enrolment transaction over
//! `enrolment_tokens`, `docker_hosts` and `docker_agents`: a refused enrolment writes nothing
//! (no host, no agent, no use). Must not: decide whether a token may be used or what a host is
//! called (the caller passes the candidate names in order), or see a token in clear.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{map_unique, new_id, now_ms, Agent, Backend, Host, Result, Store, StoreError};
use crate::labels::{self, Labels};

/// The stored form of a label set: NULL when empty.
fn labels_text(l: &Labels) -> Option<String> {
    (!l.is_empty()).then(|| labels::to_json(l))
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewEnrolmentToken {
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub labels: Labels,
    pub require_approval: bool,
    /// `None`: unlimited.
    pub max_uses: Option<i64>,
    pub expires_at: Option<i64>,
    /// The user who created it.
    pub created_by: String,
}

impl std::fmt::Debug for NewEnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewEnrolmentToken")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub prefix: String,
    pub labels: Labels,
    pub require_approval: bool,
    pub max_uses: Option<i64>,
    /// Enrolments that created or took back a host with it.
    pub uses: i64,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrolmentToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("token_hash", &format_args!("***"))
            .field("uses", &self.uses)
            .field("max_uses", &self.max_uses)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// One enrolment, as the caller decided it: which token, the host names to try in order, the
/// machine, and the new agent's id and token hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub token_id: String,
    /// The first name that is free, or taken by a host of this same machine, is used.
    pub names: Vec<String>,
    /// The hash of the machine id the agent presented.
    pub machine_id: String,
    pub agent_id: String,
    pub agent_token_hash: String,
    pub agent_token_expires_at: Option<i64>,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("token_id", &self.token_id)
            .field("names", &self.names)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

/// A committed enrolment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub host: Host,
    pub agent: Agent,
    /// The host existed (same machine, same name) and was taken back.
    pub reclaimed: bool,
    /// The host's agents this enrolment revoked (a reclaim): their sessions must close.
    pub revoked: Vec<Agent>,
    /// The token's uses, this one included.
    pub uses: i64,
}

/// Why the transaction wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotEnrolled {
    /// The token is revoked, expired or used up (read it again to tell which).
    TokenUnusable,
    /// Every candidate name belongs to a host of another machine (or of no machine).
    NameTaken(String),
}

impl Store {
    const ENROLMENT_TOKEN_COLS: &'static str =
        "id, name, token_hash, prefix, labels, require_approval, max_uses, \
        uses, created_by, created_at, expires_at, revoked_at, last_used_at";

    fn enrolment_token_row(r: &AnyRow) -> Result<EnrolmentToken> {
        Ok(EnrolmentToken {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            token_hash: r.try_get("token_hash")?,
            prefix: r.try_get("prefix")?,
            labels: labels::from_json(r.try_get::<Option<String>, _>("labels")?.as_deref()),
            require_approval: r.try_get::<i64, _>("require_approval")? != 0,
            max_uses: r.try_get("max_uses")?,
            uses: r.try_get("uses")?,
            created_by: r.try_get("created_by")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
            last_used_at: r.try_get("last_used_at")?,
        })
    }

    /// Stores a new enrolment token (already hashed).
    pub async fn insert_enrolment_token(&self, t: &NewEnrolmentToken) -> Result<EnrolmentToken> {
        let id = new_id();
        sqlx::query(
            "INSERT INTO enrolment_tokens (id, name, token_hash, prefix, labels, require_approval, max_uses, uses, \
             created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.prefix)
        .bind(labels_text(&t.labels))
        .bind(i64::from(t.require_approval))
        .bind(t.max_uses)
        .bind(&t.created_by)
        .bind(now_ms())
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "enrolment token"))?;
        self.get_enrolment_token(&id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn get_enrolment_token(&self, id: &str) -> Result<Option<EnrolmentToken>> {
        let sql = format!(
            "SELECT {} FROM enrolment_tokens WHERE id = $1",
            Self::ENROLMENT_TOKEN_COLS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::enrolment_token_row).transpose()
    }

    pub async fn find_enrolment_token_by_hash(&self, hash: &str) -> Result<Option<EnrolmentToken>> {
        let sql = format!(
            "SELECT {} FROM enrolment_tokens WHERE token_hash = $1",
            Self::ENROLMENT_TOKEN_COLS
        );
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::enrolment_token_row).transpose()
    }

    pub async fn list_enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>> {
        let sql = format!(
            "SELECT {} FROM enrolment_tokens ORDER BY created_at, id",
            Self::ENROLMENT_TOKEN_COLS
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::enrolment_token_row).collect()
    }

    /// Marks a token revoked (again: no change). `NotFound` when there is no such token.
    pub async fn revoke_enrolment_token(&self, id: &str) -> Result<EnrolmentToken> {
        sqlx::query(
            "UPDATE enrolment_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.get_enrolment_token(id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Enrols an agent in one transaction: counts the token's use only while the token is
    /// usable (not revoked, not expired, under `max_uses`: concurrent enrolments cannot pass
    /// it), takes the first candidate name that is free (a new host with the token's labels,
    /// waiting for approval when the token says so) or that belongs to a host of this same
    /// machine (taken back: its agents are revoked; waiting again when the token needs
    /// approval), and creates the host's new agent. When it returns `NotEnrolled` or an error,
    /// nothing was written.
    pub async fn enrol(&self, e: &Enrolment) -> Result<Result<Enrolled, NotEnrolled>> {
        let now = now_ms();
        let mut tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        let Some(token) = Self::use_token(&mut tx, &e.token_id, now).await? else {
            return Ok(Err(NotEnrolled::TokenUnusable));
        };
        let Some((host_id, name, reclaimed)) = Self::choose_name(&mut tx, e).await? else {
            let first = e.names.first().cloned().unwrap_or_default();
            return Ok(Err(NotEnrolled::NameTaken(first)));
        };
        let pending = token.require_approval.then_some(now);
        let revoked = if reclaimed {
            Self::take_back(&mut tx, &host_id, &token.id, pending, now).await?
        } else {
            let new = NewEnrolledHost {
                id: &host_id,
                name: &name,
                token: &token,
                machine_id: &e.machine_id,
                pending,
                now,
            };
            Self::insert_enrolled_host(&mut tx, &new).await?;
            Vec::new()
        };
        let agent_ref = Self::insert_enrolled_agent(&mut tx, e, &host_id, now).await?;
        tx.commit().await?;
        self.forget(super::CacheDrop::Hosts);
        let host = self.get_host(&host_id).await?.ok_or(StoreError::NotFound)?;
        let agent = self
            .get_agent_by_ref(&agent_ref)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(Ok(Enrolled {
            host,
            agent,
            reclaimed,
            revoked,
            uses: token.uses,
        }))
    }

    /// Counts one use of the token when it is usable now; returns it after the count.
    async fn use_token(
        conn: &mut AnyConnection,
        token_id: &str,
        now: i64,
    ) -> Result<Option<EnrolmentToken>> {
        let used = sqlx::query(
            "UPDATE enrolment_tokens SET uses = uses + 1, last_used_at = $1 WHERE id = $2 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $3) AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(now)
        .bind(token_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if used.rows_affected() == 0 {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM enrolment_tokens WHERE id = $1",
            Self::ENROLMENT_TOKEN_COLS
        );
        let row = sqlx::query(&sql)
            .bind(token_id)
            .fetch_one(&mut *conn)
            .await?;
        Self::enrolment_token_row(&row).map(Some)
    }

    /// The first candidate name that is free or this machine's: (host id, name, taken back).
    async fn choose_name(
        conn: &mut AnyConnection,
        e: &Enrolment,
    ) -> Result<Option<(String, String, bool)>> {
        for name in &e.names {
            let row = sqlx::query("SELECT id, machine_id FROM docker_hosts WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(r) = row else {
                return Ok(Some((new_id(), name.clone(), false)));
            };
            let machine: Option<String> = r.try_get("machine_id")?;
            if machine.as_deref() == Some(e.machine_id.as_str()) {
                return Ok(Some((r.try_get("id")?, name.clone(), true)));
            }
        }
        Ok(None)
    }

    /// Takes back a host of the same machine: revokes its agents (returned), notes the token
    /// and, when the token needs approval, makes the host wait again.
    async fn take_back(
        conn: &mut AnyConnection,
        host_id: &str,
        token_id: &str,
        pending: Option<i64>,
        now: i64,
    ) -> Result<Vec<Agent>> {
        let agents = Self::revoke_live_agents_of(&mut *conn, host_id, now).await?;
        sqlx::query(
            "UPDATE docker_hosts SET enrolment_token_id = $1, pending_since = COALESCE(pending_since, $2), \
             updated_at = $3 WHERE id = $4",
        )
        .bind(token_id)
        .bind(pending)
        .bind(now)
        .bind(host_id)
        .execute(&mut *conn)
        .await?;
        Ok(agents)
    }

    async fn insert_enrolled_host(conn: &mut AnyConnection, h: &NewEnrolledHost<'_>) -> Result<()> {
        sqlx::query(
            "INSERT INTO docker_hosts (id, name, connection_mode, labels, enrolment_token_id, machine_id, \
             pending_since, created_at, updated_at) VALUES ($1, $2, 'agent', $3, $4, $5, $6, $7, $8)",
        )
        .bind(h.id)
        .bind(h.name)
        .bind(labels_text(&h.token.labels))
        .bind(&h.token.id)
        .bind(h.machine_id)
        .bind(h.pending)
        .bind(h.now)
        .bind(h.now)
        .execute(&mut *conn)
        .await
        .map_err(|err| map_unique(err, "a host with this name"))?;
        Ok(())
    }

    /// The host's new agent, named by the host from now on; returns its row id.
    async fn insert_enrolled_agent(
        conn: &mut AnyConnection,
        e: &Enrolment,
        host_id: &str,
        now: i64,
    ) -> Result<String> {
        let agent_ref = new_id();
        sqlx::query(
            "INSERT INTO docker_agents (id, agent_id, host_id, auth_token_hash, token_expires_at, allowed_cidrs, \
             status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, '[]', 'disconnected', $6, $7)",
        )
        .bind(&agent_ref)
        .bind(&e.agent_id)
        .bind(host_id)
        .bind(&e.agent_token_hash)
        .bind(e.agent_token_expires_at)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|err| map_unique(err, "agent"))?;
        sqlx::query("UPDATE docker_hosts SET agent_id = $1, updated_at = $2 WHERE id = $3")
            .bind(&agent_ref)
            .bind(now)
            .bind(host_id)
            .execute(&mut *conn)
            .await?;
        Ok(agent_ref)
    }
}

/// A host an enrolment creates.
struct NewEnrolledHost<'a> {
    id: &'a str,
    name: &'a str,
    token: &'a EnrolmentToken,
    machine_id: &'a str,
    pending: Option<i64>,
    now: i64,
}
