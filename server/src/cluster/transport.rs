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
use futures_util::future::BoxFuture;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

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
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(Client::builder(TokioExecutor::new()).build(Connector { http, tls }))
}

/// Dials TCP, then TLS for an `https://` URI.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A connection to a replica.
pub enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl tower::Service<hyper::Uri> for Connector {
    type Response = Io;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<Io, io::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri.host().unwrap_or_default();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tcp = http.call(uri).await.map_err(io::Error::other)?;
            if !https {
                return Ok(Io::Plain(tcp));
            }
            let config = tls.ok_or_else(|| {
                io::Error::other(
                    "the replica's URL is https:// and no replica_ca is set to trust it",
                )
            })?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp.into_inner())
                .await?;
            Ok(Io::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
