//! The `api_tokens` table: user API tokens, stored as hashes, read through a short-lived
//! cache (see `cache.rs`) on every request.
//!
//! Owns: its SQL and the token rows. Must not: see a token in clear (only its hash).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{map_unique, new_id, now_ms, Result, Role, Store, StoreError};

#[derive(Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub user_id: String,
    pub token_hash: String,
    pub prefix: String,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for NewApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiToken")
            .field("user_id", &self.user_id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    pub token_hash: String,
    pub prefix: String,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("user_name", &self.user_name)
            .field("role", &self.role)
            .field("token_hash", &format_args!("***"))
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

impl Store {
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

    /// The tokens of one user, oldest first.
    pub async fn list_user_api_tokens(&self, user_id: &str) -> Result<Vec<ApiToken>> {
        let sql = format!(
            "SELECT {} FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.user_id = $1 \
             ORDER BY t.created_at, t.id",
            Self::TOKEN_COLS
        );
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
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
        self.forget(super::CacheDrop::Token(id.to_string()));
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
}
