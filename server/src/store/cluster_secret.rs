//! The `cluster_secret` table: the one credential replicas present to each other, as
//! ciphertext.
//!
//! Owns: its SQL. Must not: hold the secret in clear (the cluster module encrypts and
//! decrypts it with the at-rest key).

use sqlx::Row;

use super::{now_ms, Result, Store};

impl Store {
    /// Stores `secret_enc` unless a secret exists already, and returns the stored one (the
    /// first replica's wins when several start at once).
    pub async fn cluster_secret_or_insert(&self, secret_enc: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO cluster_secret (id, secret_enc, created_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(secret_enc)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT secret_enc FROM cluster_secret WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("secret_enc")?)
    }
}
