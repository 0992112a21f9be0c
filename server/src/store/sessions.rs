//! The `user_sessions` and `signin_links` tables: browser sessions and one-time sign-in
//! links, stored as SHA-256 hashes of their secrets.
//!
//! Owns: their SQL. Must not: see a session id or a link in clear, or decide when a session
//! has expired (`crate::accounts` does, with the times stored here).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{new_id, now_ms, Result, Role, Store};

/// A new browser session, its secret already hashed.
#[derive(Clone)]
pub struct NewSession {
    pub user_id: String,
    pub session_hash: String,
    pub expires_at: i64,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl std::fmt::Debug for NewSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSession")
            .field("user_id", &self.user_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A browser session with its user's current name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    pub id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// The absolute end (the idle end is `last_seen_at` plus the idle timeout).
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

const SESSION_COLS: &str = "s.id, s.user_id, u.name, u.role, s.created_at, s.last_seen_at, \
    s.expires_at, s.revoked_at, s.source_ip, s.user_agent";

fn session_row(r: &AnyRow) -> Result<UserSession> {
    Ok(UserSession {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        user_name: r.try_get("name")?,
        role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        source_ip: r.try_get("source_ip")?,
        user_agent: r.try_get("user_agent")?,
    })
}

impl Store {
    pub async fn insert_session(&self, s: &NewSession) -> Result<String> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO user_sessions (id, user_id, session_hash, created_at, last_seen_at, \
             expires_at, source_ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&s.user_id)
        .bind(&s.session_hash)
        .bind(now)
        .bind(now)
        .bind(s.expires_at)
        .bind(&s.source_ip)
        .bind(&s.user_agent)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// The session whose secret hashes to `hash` (revoked or expired ones too).
    pub async fn find_session_by_hash(&self, hash: &str) -> Result<Option<UserSession>> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM user_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.session_hash = $1"
        );
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_row).transpose()
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<UserSession>> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM user_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_row).transpose()
    }

    /// The user's sessions that are not revoked, newest first.
    pub async fn list_user_sessions(&self, user_id: &str) -> Result<Vec<UserSession>> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM user_sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.user_id = $1 AND s.revoked_at IS NULL ORDER BY s.created_at DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_row).collect()
    }

    pub async fn touch_session(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE user_sessions SET last_seen_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes one session; false when it was not live.
    pub async fn revoke_session(&self, id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE user_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes every live session of the user except `keep`; returns the revoked ids.
    pub async fn revoke_user_sessions(
        &self,
        user_id: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>> {
        let live = self.list_user_sessions(user_id).await?;
        let mut ended = Vec::new();
        for s in live.into_iter().filter(|s| Some(s.id.as_str()) != keep) {
            if self.revoke_session(&s.id).await? {
                ended.push(s.id);
            }
        }
        Ok(ended)
    }

    /// Deletes sessions and sign-in links that ended before `before`.
    pub async fn prune_sessions(&self, before: i64) -> Result<u64> {
        let a = sqlx::query(
            "DELETE FROM user_sessions WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        let b = sqlx::query("DELETE FROM signin_links WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    pub async fn insert_signin_link(
        &self,
        user_id: &str,
        link_hash: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO signin_links (id, user_id, link_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_id())
        .bind(user_id)
        .bind(link_hash)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Uses up the sign-in link whose secret hashes to `hash`: the user id when the link
    /// existed, was unused and had not expired. One statement, so two uses cannot both win.
    pub async fn take_signin_link(&self, hash: &str) -> Result<Option<String>> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE signin_links SET used_at = $1 WHERE link_hash = $2 AND used_at IS NULL \
             AND expires_at > $1",
        )
        .bind(now)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT user_id FROM signin_links WHERE link_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("user_id")).transpose()?)
    }
}
