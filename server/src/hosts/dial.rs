//! How the server dials a Docker daemon: the `docker_url` of a direct host parsed into an
//! [`Endpoint`] (`unix://`, `tcp://`, `https://`), and hyper's client over it: hyperlocal for
//! a socket, plain HTTP, or rustls with the host's CA and client certificate (as for Docker
//! on port 2376).
//!
//! Owns: the transports and their TLS. Must not: know what is sent (the direct adapter
//! decides).

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use protocol::mapping::unreachable;
use protocol::ErrorBody;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;

use crate::connector::Connector;

/// Where a direct host's daemon listens, parsed from `docker_url` by the one endpoint parser.
pub use protocol::endpoint::Endpoint;

pub use crate::tls::{client_config as client_tls_config, TlsMaterial};

pub(super) enum Transport<B> {
    Unix(String, Client<hyperlocal::UnixConnector, B>),
    Tcp(String, Client<HttpConnector, B>),
    Https(String, Client<Connector, B>),
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
                let connector = Connector::new(
                    Some(config.clone()),
                    Some(server_name.clone()),
                    Duration::from_secs(10),
                );
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
