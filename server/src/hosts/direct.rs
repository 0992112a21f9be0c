//! The adapter for hosts the server dials itself (see [`super::dial`] for how).
//!
//! Owns: the API version negotiated once per host (`GET /_ping`'s `Api-Version`, else
//! `GET /version`), running a catalog operation (the protocol crate's `Plan`: this file only
//! sends each request the plan yields and feeds the answer back), and forwarding one Docker
//! API exchange as it is (passthrough, with the daemon's own hijack for exec and attach).
//! Must not: map operations to Docker requests itself.

use axum::body::Body;
use axum::http::header;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use protocol::mapping::{
    negotiate_api_version, unreachable, DockerRequest, DockerResponse, Plan, Step,
};
use protocol::{ErrorBody, ErrorCode, Operation};
use rustls::pki_types::ServerName;
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{oneshot, OnceCell};

use super::dial::{client_tls_config, Endpoint, TlsMaterial, Transport};
use super::{Call, HostAdapter, Route, StreamRequest, StreamResponse, UpgradedTunnel};
use crate::crypto::KeyBox;
use crate::reply::Outcome;
use crate::store::Host;

/// The largest daemon answer read (logs and exec output are cut by the plan afterwards).
const MAX_BODY: usize = 256 * 1024 * 1024;

pub struct DirectHostAdapter {
    transport: Transport<Full<Bytes>>,
    /// A second pool for the Docker API passthrough, whose bodies stream.
    proxy: Transport<Body>,
    api_version: OnceCell<String>,
    /// How long a passthrough exchange waits for the daemon's response head (after the
    /// request body was sent).
    stream_timeout: Duration,
}

impl DirectHostAdapter {
    /// Builds the adapter of a direct host row (decrypting its TLS key with `keys`).
    pub fn from_host(
        host: &Host,
        keys: &KeyBox,
        stream_timeout: Duration,
    ) -> Result<Self, ErrorBody> {
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
        DirectHostAdapter::new(url, tls, stream_timeout)
    }

    pub fn new(url: &str, tls: TlsMaterial, stream_timeout: Duration) -> Result<Self, ErrorBody> {
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
            stream_timeout,
        })
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
        if let Some(a) = &req.registry_auth {
            builder = builder.header("x-registry-auth", a.expose());
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
                    registry_auth: None,
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
    async fn run_plan(&self, op: &Operation) -> Outcome {
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

    /// Forwards one Docker API exchange: the request as the client sent it (origin-form
    /// target, end-to-end headers, streamed body), and the daemon's response head with its
    /// body still streaming. The response head must come within the stream timeout after the
    /// request body was sent.
    async fn forward(&self, req: StreamRequest) -> Result<StreamResponse, ErrorBody> {
        let (done_tx, done_rx) = oneshot::channel();
        let body = match req.body {
            Some(body) => Body::new(EndSignal {
                inner: body,
                done: Some(done_tx),
            }),
            None => {
                drop(done_tx);
                Body::empty()
            }
        };
        let mut b = hyper::Request::builder()
            .method(req.method)
            .uri(req.target.as_str());
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if req.upgrade {
            b = b
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "tcp");
        }
        let r = b
            .body(body)
            .map_err(|e| ErrorBody::invalid_params(format!("invalid request: {e}")))?;
        let timeout = self.stream_timeout;
        let deadline = async {
            let _ = done_rx.await;
            tokio::time::sleep(timeout).await;
        };
        let mut resp = tokio::select! {
            r = self.proxy.request(r) => r?,
            _ = deadline => return Err(ErrorBody::new(
                ErrorCode::Timeout,
                format!("the daemon did not answer within {} s", timeout.as_secs_f64()),
            )),
        };
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        if status == 101 && req.upgrade {
            let daemon = hyper::upgrade::on(&mut resp);
            return Ok(StreamResponse {
                status,
                headers,
                body: Body::empty(),
                tunnel: Some(Box::new(UpgradedTunnel {
                    upgrade: daemon,
                    peer: "the daemon",
                })),
            });
        }
        Ok(StreamResponse {
            status,
            headers,
            body: Body::new(resp.into_body()),
            tunnel: None,
        })
    }
}

impl HostAdapter for DirectHostAdapter {
    fn route(&self) -> Route {
        Route {
            via: "direct",
            target: Some("direct".into()),
            agent_id: None,
            queueable: false,
            online: true,
        }
    }

    fn run<'a>(&'a self, op: &'a Operation, call: &'a Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match tokio::time::timeout(call.timeout, self.run_plan(op)).await {
                Ok(r) => r,
                Err(_) => Err(ErrorBody::new(
                    ErrorCode::Timeout,
                    format!(
                        "the daemon did not answer within {} s",
                        call.timeout.as_secs_f64()
                    ),
                )),
            }
        })
    }

    fn open_stream(&self, req: StreamRequest) -> BoxFuture<'_, Result<StreamResponse, ErrorBody>> {
        Box::pin(self.forward(req))
    }
}

/// A request body that says when it ended (the response timeout starts then, so a long
/// upload does not count against it).
struct EndSignal<B> {
    inner: B,
    done: Option<oneshot::Sender<()>>,
}

impl<B> HttpBody for EndSignal<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = &r {
            if let Some(tx) = this.done.take() {
                let _ = tx.send(());
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
