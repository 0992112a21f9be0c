//! The cluster credential: the secret one replica presents to another when it forwards a
//! request for an agent the other holds.
//!
//! Made once, at random (32 bytes), by the first replica that starts, and kept in the
//! database encrypted with the at-rest key that every replica shares; each replica decrypts it
//! at start. It travels in the [`HEADER`] header and is compared in constant time.
//!
//! Owns: making, loading and checking the credential. Must not: show it (`Debug` is masked;
//! it is never logged).

use protocol::Secret;
use rand::{RngCore, SeedableRng};
use subtle::ConstantTimeEq;

use crate::crypto::KeyBox;
use crate::store::Store;

/// The request header that carries the credential between replicas.
pub const HEADER: &str = "x-docker-ctl-cluster";

/// The shared secret. `Debug` prints a mask.
#[derive(Clone)]
pub struct Credential(Secret);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl Credential {
    /// The cluster's credential: the stored one, or a new one stored now.
    ///
    /// Errors: the database fails, or the stored secret cannot be decrypted (this replica's
    /// at-rest key differs from the one that made it: every replica needs the same key).
    pub async fn load_or_create(store: &Store, keys: &KeyBox) -> anyhow::Result<Credential> {
        let mut b = [0u8; 32];
        rand::rngs::StdRng::from_os_rng().fill_bytes(&mut b);
        let fresh = keys.encrypt(&hex::encode(b))?;
        let stored = store.cluster_secret_or_insert(&fresh).await?;
        let secret = keys.decrypt(&stored).map_err(|_| {
            anyhow::anyhow!(
                "cannot decrypt the cluster credential: every replica needs the same at-rest key \
                 (encryption_key, or the same DATA_DIR/secret.key)"
            )
        })?;
        Ok(Credential(secret))
    }

    /// The header value to send.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether `presented` is the credential (constant time).
    pub fn check(&self, presented: &[u8]) -> bool {
        let want = self.0.expose().as_bytes();
        presented.len() == want.len() && bool::from(presented.ct_eq(want))
    }
}
