//! The `users` table: the people API tokens belong to, and their roles.
//!
//! Owns: its SQL and the [`Role`] vocabulary. Must not: decide what a role may do.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{map_unique, new_id, now_ms, Result, Store};

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
}

impl Store {
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
}
