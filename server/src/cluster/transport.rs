//! How a replica reaches another: one pooled HTTP client for every replica-to-replica
//! exchange (forwarded commands and Docker API exchanges, the followed feeds), over plain TCP
//! for an `http://` advertise URL and over TLS for an `https://` one.
//!
//! TLS trusts only the CA of `replica_ca` (never the web PKI: a replica's certificate is
//! issued for the cluster, not for the world) and checks the certificate against the URL's
//! host. The replica is authenticated, in either case, by the cluster credential each
//! request carries.
//!
//! Owns: the replicas' transport and its trust. Must not: know what is sent over it.

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::connector::Connector;
use crate::tls::{client_config, TlsMaterial};

/// The client replicas talk to each other with. Cheap to clone (one pool).
pub type ReplicaClient = Client<Connector, Body>;

/// A new client. `ca`: the PEM file of the CA that signed the replicas' certificates
/// (without it, an `https://` replica cannot be reached).
pub fn client(ca: Option<&Path>) -> anyhow::Result<ReplicaClient> {
    let tls = match ca {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading replica_ca {}: {e}", path.display()))?;
            let material = TlsMaterial {
                ca_pem: Some(pem),
                cert_pem: None,
                key_pem: None,
                server_name: None,
            };
            let config = client_config(&material)
                .map_err(|e| anyhow::anyhow!("replica_ca {}: {e}", path.display()))?;
            Some(Arc::new(config))
        }
        None => None,
    };
    // The certificate is checked against the advertise URL's host.
    let connector = Connector::new(tls, None, Duration::from_secs(5));
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}
