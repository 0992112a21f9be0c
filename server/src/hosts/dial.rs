//! How the server dials a Docker daemon: the `docker_url` of a direct host parsed into an
//! [`Endpoint`] (`unix://`, `tcp://`, `https://`), and hyper's client over it: hyperlocal for
//! a socket, plain HTTP, or rustls with the host's CA and client certificate (as for Docker
//! on port 2376).
//!
//! Owns: the transports and their TLS. Must not: know what is sent (the direct adapter
//! decides).

use futures_util::future::BoxFuture;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::mapping::unreachable;
use protocol::ErrorBody;
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Where a direct host's daemon listens, parsed from `docker_url` by the one endpoint parser.
pub use protocol::endpoint::Endpoint;

pub use crate::tls::{client_config as client_tls_config, TlsMaterial};

pub(super) enum Transport<B> {
    Unix(String, Client<hyperlocal::UnixConnector, B>),
    Tcp(String, Client<HttpConnector, B>),
    Https(String, Client<TlsConnector, B>),
}

impl<B> Transport<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(super) fn build(
        endpoint: &Endpoint,
        tls: Option<&(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    ) -> Result<Self, ErrorBody> {
        Ok(match endpoint {
            Endpoint::Unix(path) => Transport::Unix(
                path.clone(),
                Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector),
            ),
            Endpoint::Tcp(hp) => {
                let mut c = HttpConnector::new();
                c.set_nodelay(true);
                c.set_connect_timeout(Some(Duration::from_secs(10)));
                Transport::Tcp(
                    hp.authority(),
                    Client::builder(TokioExecutor::new()).build(c),
                )
            }
            Endpoint::Https(hp) => {
                let (config, server_name) =
                    tls.ok_or_else(|| ErrorBody::internal("https without TLS settings"))?;
                let connector = TlsConnector {
                    config: config.clone(),
                    server_name: server_name.clone(),
                };
                Transport::Https(
                    hp.authority(),
                    Client::builder(TokioExecutor::new()).build(connector),
                )
            }
        })
    }

    /// Sends `req`, whose URI is origin-form (`/v1.41/info?x=1`), to the daemon.
    pub(super) async fn request(
        &self,
        mut req: hyper::Request<B>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ErrorBody> {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let uri: Result<hyper::Uri, _> = match self {
            Transport::Unix(path, _) => Ok(hyperlocal::Uri::new(path, &target).into()),
            Transport::Tcp(auth, _) => format!("http://{auth}{target}").parse(),
            Transport::Https(auth, _) => format!("https://{auth}{target}").parse(),
        };
        *req.uri_mut() = uri.map_err(|e| ErrorBody::internal(e.to_string()))?;
        let result = match self {
            Transport::Unix(_, c) => c.request(req).await,
            Transport::Tcp(_, c) => c.request(req).await,
            Transport::Https(_, c) => c.request(req).await,
        };
        result.map_err(|e| unreachable(error_chain(&e)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A hyper connector that dials TCP and runs a rustls handshake.
#[derive(Clone)]
pub(super) struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

pub(super) struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<hyper::Uri> for TlsConnector {
    type Response = TlsIo;
    type Error = io::Error;
    type Future = BoxFuture<'static, Result<TlsIo, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URI"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(2376);
            let tcp =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((host, port)))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TlsIo(TokioIo::new(tls)))
        })
    }
}
