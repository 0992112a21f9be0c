//! The `users` table: the people API tokens and browser sessions belong to, their roles and
//! their password hashes.
//!
//! Owns: its SQL and the [`Role`] vocabulary. Must not: decide what a role may do, or see a
//! password in clear (only its argon2id hash, made by `crate::accounts`).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{map_unique, new_id, now_ms, Result, Store, StoreError};

/// A user's role. Ordered: each role can do what the roles below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: admin, operator or viewer"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    /// Whether the user can sign in with a password.
    pub has_password: bool,
}

const USER_COLS: &str = "id, name, role, created_at, password_hash";

fn user_row(r: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&r.try_get::<String, _>("role")?).unwrap_or(Role::Viewer),
        created_at: r.try_get("created_at")?,
        has_password: r.try_get::<Option<String>, _>("password_hash")?.is_some(),
    })
}

impl Store {
    /// Finds the user `name` or creates it with `role`. An existing user keeps its id; its
    /// role is set to `role`.
    pub async fn upsert_user(&self, name: &str, role: Role) -> Result<User> {
        if let Some(u) = self.find_user(name).await? {
            sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                .bind(role.as_str())
                .bind(&u.id)
                .execute(&self.pool)
                .await?;
            self.forget(super::CacheDrop::Tokens);
            return Ok(User { role, ..u });
        }
        self.create_user(name, role, None).await
    }

    /// Creates the user `name` with `role` and, optionally, a password hash. `Conflict` when
    /// the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
    ) -> Result<User> {
        let now = now_ms();
        let id = new_id();
        sqlx::query(
            "INSERT INTO users (id, name, role, created_at, password_hash, password_changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(role.as_str())
        .bind(now)
        .bind(password_hash)
        .bind(password_hash.map(|_| now))
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "user"))?;
        Ok(User {
            id,
            name: name.to_string(),
            role,
            created_at: now,
            has_password: password_hash.is_some(),
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(user_row).collect()
    }

    /// The user `name` and its password hash (`None` when it has no password).
    pub async fn user_with_password(&self, name: &str) -> Result<Option<(User, Option<String>)>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((user_row(&r)?, r.try_get("password_hash")?)))
            .transpose()
    }

    /// Sets (or, with `None`, removes) the user's password hash. `NotFound` without the user.
    pub async fn set_user_password(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
    ) -> Result<()> {
        let r = sqlx::query(
            "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE id = $3",
        )
        .bind(password_hash)
        .bind(now_ms())
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Sets the role of the user `name`. `NotFound` without the user.
    pub async fn set_user_role(&self, name: &str, role: Role) -> Result<User> {
        let r = sqlx::query("UPDATE users SET role = $1 WHERE name = $2")
            .bind(role.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.forget(super::CacheDrop::Tokens);
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.find_user(name).await?.ok_or(StoreError::NotFound)
    }

    /// Deletes the user `name` with its tokens, sessions and sign-in links.
    pub async fn delete_user(&self, name: &str) -> Result<User> {
        let user = self.find_user(name).await?.ok_or(StoreError::NotFound)?;
        let mut tx = self.pool.begin().await?;
        for table in ["api_tokens", "user_sessions", "signin_links"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(&user.id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.forget(super::CacheDrop::Tokens);
        Ok(user)
    }

    pub async fn find_user(&self, name: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_row).transpose()
    }
}
