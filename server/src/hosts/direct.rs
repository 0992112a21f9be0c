//! The adapter for hosts the server dials itself: hyper's client over `unix://` (hyperlocal),
//! `tcp://` (plain HTTP) or `https://` (rustls, with a client certificate as for Docker on
//! port 2376).
//!
//! Owns: the transport and the API version negotiated once per host (`GET /_ping`'s
//! `Api-Version`, else `GET /version`). The operation itself is `protocol::mapping::Plan`:
//! this file only sends each request the plan yields and feeds the answer back.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::mapping::{
    negotiate_api_version, unreachable, DockerRequest, DockerResponse, Plan, Step,
};
use protocol::{ErrorBody, ErrorCode, Operation};
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use super::HostAdapter;
use crate::crypto::KeyBox;
use crate::store::Host;

/// The largest daemon answer read (logs and exec output are cut by the plan afterwards).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Where a direct host's daemon listens, parsed from `docker_url` by the one endpoint parser.
pub use protocol::endpoint::Endpoint;

/// TLS material of an https host (the key already decrypted).
pub struct TlsMaterial {
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<protocol::Secret>,
    pub server_name: Option<String>,
}

enum Transport<B> {
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
    fn build(
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
    async fn request(
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

/// The request body type of passthrough requests: the client's body, streamed.
pub type ProxyBody = axum::body::Body;

pub struct DirectHostAdapter {
    transport: Transport<Full<Bytes>>,
    /// A second pool for the Docker API passthrough, whose bodies stream.
    proxy: Transport<ProxyBody>,
    api_version: OnceCell<String>,
}

impl DirectHostAdapter {
    /// Builds the adapter of a direct host row (decrypting its TLS key with `keys`).
    pub fn from_host(host: &Host, keys: &KeyBox) -> Result<Self, ErrorBody> {
        let url = host
            .docker_url
            .as_deref()
            .ok_or_else(|| ErrorBody::invalid_params("this direct host has no docker_url"))?;
        let key_pem = match &host.tls_key_enc {
            Some(enc) => Some(keys.decrypt(enc).map_err(|e| {
                tracing::error!(error = %e, host = %host.id, "cannot decrypt the host's TLS key");
                ErrorBody::internal("cannot decrypt the host's TLS key")
            })?),
            None => None,
        };
        let tls = TlsMaterial {
            ca_pem: host.tls_ca.clone(),
            cert_pem: host.tls_cert.clone(),
            key_pem,
            server_name: host.tls_server_name.clone(),
        };
        DirectHostAdapter::new(url, tls)
    }

    pub fn new(url: &str, tls: TlsMaterial) -> Result<Self, ErrorBody> {
        let endpoint = Endpoint::parse(url).map_err(ErrorBody::invalid_params)?;
        let tls_settings = match &endpoint {
            Endpoint::Https(hp) => {
                let config = client_tls_config(&tls).map_err(ErrorBody::invalid_params)?;
                let name = tls.server_name.clone().unwrap_or_else(|| hp.host.clone());
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    ErrorBody::invalid_params(format!("invalid TLS server name {name:?}"))
                })?;
                Some((Arc::new(config), server_name))
            }
            _ => None,
        };
        Ok(DirectHostAdapter {
            transport: Transport::build(&endpoint, tls_settings.as_ref())?,
            proxy: Transport::build(&endpoint, tls_settings.as_ref())?,
            api_version: OnceCell::new(),
        })
    }

    /// Forwards one Docker API request (origin-form URI, end-to-end headers, streamed body)
    /// and returns the daemon's response head with its body still streaming. For a hijack,
    /// the caller adds `Connection: Upgrade` and uses `hyper::upgrade::on` on the response.
    pub async fn proxy(
        &self,
        req: hyper::Request<ProxyBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ErrorBody> {
        self.proxy.request(req).await
    }

    /// Sends one request and reads the whole answer.
    async fn send(
        &self,
        req: &DockerRequest,
        version: Option<&str>,
    ) -> Result<DockerResponse, ErrorBody> {
        let target = req.uri(version);
        let body = req.body_bytes().map(Bytes::from).unwrap_or_default();
        let mut builder = hyper::Request::builder().method(req.method.as_str());
        if req.body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let r = builder
            .uri(target)
            .body(Full::new(body))
            .map_err(|e| ErrorBody::internal(e.to_string()))?;
        let resp = self.transport.request(r).await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes()
            .to_vec();
        Ok(DockerResponse {
            status,
            headers,
            body,
        })
    }

    /// The API version to use with this daemon, negotiated on first use.
    pub async fn api_version(&self) -> Result<String, ErrorBody> {
        self.api_version
            .get_or_try_init(|| async {
                let ping = DockerRequest {
                    method: protocol::mapping::Method::Get,
                    path: "/_ping".into(),
                    query: Vec::new(),
                    body: None,
                    progress: false,
                };
                let resp = self.send(&ping, None).await?;
                let daemon = match resp.header("api-version") {
                    Some(v) => v.to_string(),
                    None => {
                        let version = DockerRequest {
                            path: "/version".into(),
                            ..ping
                        };
                        let resp = self.send(&version, None).await?;
                        let v: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
                        v.get("ApiVersion")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string()
                    }
                };
                negotiate_api_version(&daemon).ok_or_else(|| {
                    ErrorBody::new(
                        ErrorCode::Unsupported,
                        format!(
                            "the daemon's API version {daemon:?} is older than {}",
                            protocol::mapping::MIN_API_VERSION
                        ),
                    )
                })
            })
            .await
            .cloned()
    }

    /// Runs the protocol crate's plan for `op`.
    pub async fn run(&self, op: &Operation) -> Result<Value, ErrorBody> {
        let version = self.api_version().await?;
        let mut plan = Plan::new(op.clone());
        let mut answer = None;
        loop {
            match plan.next(answer.take()) {
                Step::Done(result) => return result,
                // `req.progress` (image.pull): the body is collected whole; the plan reads it.
                Step::Call(req) => answer = Some(self.send(&req, Some(&version)).await?),
            }
        }
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

impl HostAdapter for DirectHostAdapter {
    fn execute<'a>(
        &'a self,
        op: &'a Operation,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ErrorBody>> {
        Box::pin(async move {
            match tokio::time::timeout(timeout, self.run(op)).await {
                Ok(r) => r,
                Err(_) => Err(ErrorBody::new(
                    ErrorCode::Timeout,
                    format!(
                        "the daemon did not answer within {} s",
                        timeout.as_secs_f64()
                    ),
                )),
            }
        })
    }

    fn kind(&self) -> &'static str {
        "direct"
    }
}

/// The rustls client config of an https host: its CA (or the web PKI roots) and its client
/// certificate.
fn client_tls_config(tls: &TlsMaterial) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(ca) => {
            for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                let cert = cert.map_err(|e| format!("tls_ca: {e}"))?;
                roots.add(cert).map_err(|e| format!("tls_ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_ca holds no PEM certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls_cert: {e}"))?;
            let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
                .map_err(|e| format!("tls_key: {e}"))?
                .ok_or("tls_key holds no PEM private key")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("tls_cert and tls_key go together".into()),
    }
}

/// A hyper connector that dials TCP and runs a rustls handshake.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

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
