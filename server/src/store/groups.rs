//! The `host_groups` table: saved groups, each a named, stored label selector.
//!
//! A group's id is made once and never changes (a rename keeps it), so what refers to a group
//! (a rollout's record, later a role scoped to a group) names it by id.
//!
//! Owns: its SQL. Must not: parse or match selectors (the caller stores the canonical text).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{map_unique, new_id, now_ms, Result, Store, StoreError};

/// A saved group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub name: String,
    /// The selector in its canonical form.
    pub selector: String,
    pub description: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, name, selector, description, created_by, created_at, updated_at";

fn row(r: &AnyRow) -> Result<Group> {
    Ok(Group {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        selector: r.try_get("selector")?,
        description: r.try_get("description")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

impl Store {
    /// Saves a new group (its id is made here). A taken name is a conflict.
    pub async fn create_group(
        &self,
        name: &str,
        selector: &str,
        description: Option<&str>,
        created_by: &str,
    ) -> Result<Group> {
        let id = new_id();
        let now = now_ms();
        sqlx::query(&format!(
            "INSERT INTO host_groups ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&id)
        .bind(name)
        .bind(selector)
        .bind(description)
        .bind(created_by)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a group with this name"))?;
        self.get_group(&id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn get_group(&self, id: &str) -> Result<Option<Group>> {
        let r = sqlx::query(&format!("SELECT {COLS} FROM host_groups WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    pub async fn get_group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let r = sqlx::query(&format!("SELECT {COLS} FROM host_groups WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Groups in name order, at most `limit`, after the name `after`.
    pub async fn list_groups(&self, after: Option<&str>, limit: i64) -> Result<Vec<Group>> {
        let limit = limit.clamp(1, 1000);
        let rows = match after {
            Some(a) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM host_groups WHERE name > $1 ORDER BY name LIMIT $2"
                ))
                .bind(a)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM host_groups ORDER BY name LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(row).collect()
    }

    /// Writes a group's name, selector and description.
    pub async fn update_group(&self, g: &Group) -> Result<Group> {
        let r = sqlx::query(
            "UPDATE host_groups SET name = $1, selector = $2, description = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(&g.name)
        .bind(&g.selector)
        .bind(&g.description)
        .bind(now_ms())
        .bind(&g.id)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, "a group with this name"))?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_group(&g.id).await?.ok_or(StoreError::NotFound)
    }

    pub async fn delete_group(&self, id: &str) -> Result<()> {
        let r = sqlx::query("DELETE FROM host_groups WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
