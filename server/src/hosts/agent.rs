//! The adapter for hosts whose agent dials in: commands and Docker API streams go over the
//! agent's WebSocket, through the [`AgentManager`].
//!
//! Owns: which of the host's agents serves it now (an online one bound to the host,
//! preferring the one the host names), the one "the host has no agent" error, and turning a
//! passthrough exchange into an agent stream: the request body uploaded under the agent's
//! credit, the response head awaited within the session's command timeout (counted from the
//! end of the upload), the response body read as it comes, and a hijack pumped both ways.
//! Must not: touch sessions (only the manager's methods).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use protocol::{ErrorBody, ErrorCode, Operation, STREAM_CHUNK};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Call, HostAdapter, Route, StreamRequest, StreamResponse, Tunnel};
use crate::agents::{not_connected, AgentManager, StreamOpen, StreamReader, StreamWriter};
use crate::metrics::Metrics;
use crate::reply::Outcome;

pub struct AgentHostAdapter {
    agents: AgentManager,
    /// The host the commands are for: only a session bound to it runs them.
    host_id: String,
    /// `docker_agents.id` of the agent the host names (preferred when several are online).
    preferred: Option<String>,
    /// The external id of the agent the host names.
    agent_id: Option<String>,
    /// Where a command goes: an online agent bound to the host, else the one it names.
    target: Option<String>,
}

/// `agent_offline`: the host has no agent at all.
pub fn no_agent() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::AgentOffline,
        "the host has no agent: enrol one with POST /api/v1/agents",
    )
}

impl AgentHostAdapter {
    pub fn new(
        agents: AgentManager,
        host_id: String,
        preferred: Option<String>,
        agent_id: Option<String>,
    ) -> Self {
        let target = agents.serving_agent(&host_id, preferred.as_deref());
        AgentHostAdapter {
            agents,
            host_id,
            preferred,
            agent_id,
            target,
        }
    }

    /// The online agent bound to the host, or why there is none.
    fn online(&self) -> Result<String, ErrorBody> {
        match self
            .agents
            .online_agent_for_host(&self.host_id, self.preferred.as_deref())
        {
            Some(a) => Ok(a),
            None if self.preferred.is_some() => Err(not_connected()),
            None => Err(no_agent()),
        }
    }

    async fn stream(&self, req: StreamRequest) -> Result<StreamResponse, ErrorBody> {
        let agent_ref = self.online()?;
        let timeout = self.agents.command_timeout_of(&agent_ref);
        let open = StreamOpen {
            method: req.method.as_str().to_string(),
            path: req.target,
            headers: req.headers,
            body: req.body.is_some(),
            upgrade: req.upgrade,
        };
        let mut stream = self.agents.open_stream(&self.host_id, &agent_ref, open)?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let uploader = match req.body {
            Some(body) => {
                let w = stream.writer();
                Some(tokio::spawn(async move {
                    let r = upload(body, w).await;
                    let _ = done_tx.send(());
                    r
                }))
            }
            None => {
                drop(done_tx);
                None
            }
        };
        let uploaded = async {
            let _ = done_rx.await;
        };
        let head = match stream.head(timeout, uploaded).await {
            Ok(h) => h,
            Err(e) => {
                stream.cancel(&format!("no response: {}", e.message));
                return Err(e);
            }
        };
        let headers = header_map(&head.headers);
        if head.status == 101 && req.upgrade {
            // The request body (if any) must be complete before raw bytes follow.
            if let Some(u) = uploader {
                if !matches!(u.await, Ok(Ok(()))) {
                    stream.cancel("the request body did not complete");
                    return Err(ErrorBody::new(
                        ErrorCode::DockerError,
                        "the request body did not complete",
                    ));
                }
            }
            stream.reopen_for_upgrade();
            let writer = stream.writer();
            let reader = stream.reader();
            return Ok(StreamResponse {
                status: head.status,
                headers,
                body: Body::empty(),
                tunnel: Some(Box::new(StreamTunnel { reader, writer })),
            });
        }
        Ok(StreamResponse {
            status: head.status,
            headers,
            body: response_body(stream.reader()),
            tunnel: None,
        })
    }
}

impl HostAdapter for AgentHostAdapter {
    fn route(&self) -> Route {
        Route {
            via: "agent",
            target: self.target.clone(),
            agent_id: self.agent_id.clone(),
            queueable: true,
            online: self
                .agents
                .online_agent_for_host(&self.host_id, self.preferred.as_deref())
                .is_some(),
        }
    }

    fn run<'a>(&'a self, op: &'a Operation, call: &'a Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match &self.target {
                Some(a) => self.agents.call(&self.host_id, a, op, call).await,
                None => Err(no_agent()),
            }
        })
    }

    fn open_stream(&self, req: StreamRequest) -> BoxFuture<'_, Result<StreamResponse, ErrorBody>> {
        Box::pin(self.stream(req))
    }
}

/// The agent's response headers as a map (names or values that are not valid HTTP are
/// dropped).
fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            map.append(k, v);
        }
    }
    map
}

/// Streams the client's request body to the agent, then `stream_end`.
async fn upload(body: Body, mut w: StreamWriter) -> Result<(), ErrorBody> {
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(b) => w.write(b).await?,
            Err(e) => {
                w.cancel("the client's request body broke");
                return Err(ErrorBody::new(
                    ErrorCode::InvalidParams,
                    format!("reading the request body: {e}"),
                ));
            }
        }
    }
    w.end().await
}

/// The response body as it arrives from the agent; after an error the body ends (hyper then
/// aborts the connection).
fn response_body(reader: StreamReader) -> Body {
    let chunks = futures_util::stream::unfold(reader, |mut reader| async move {
        match reader.next().await {
            Some(Ok(b)) => Some((Ok::<Bytes, std::io::Error>(b), reader)),
            Some(Err(e)) => Some((Err(std::io::Error::other(e.message)), reader)),
            None => None,
        }
    });
    let chunks = chunks.scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if let Some(Err(_)) = &out {
            *failed = true;
        }
        futures_util::future::ready(out)
    });
    Body::from_stream(chunks)
}

/// The agent's side of a hijacked connection.
struct StreamTunnel {
    reader: StreamReader,
    writer: StreamWriter,
}

impl Tunnel for StreamTunnel {
    fn pump(
        self: Box<Self>,
        client: Box<dyn super::ClientIo>,
        metrics: Arc<Metrics>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(pump(client, self.reader, self.writer, metrics))
    }
}

/// Pumps a hijacked connection: client bytes to the agent (credit-limited), agent bytes to
/// the client. The client's half-close becomes `stream_end`; the agent's `stream_end` shuts
/// the client's read side down. Ends when both directions ended, or at once when either
/// side fails or cancels.
async fn pump<IO>(io: IO, mut reader: StreamReader, mut writer: StreamWriter, metrics: Arc<Metrics>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(io);
    let up_metrics = metrics.clone();
    let up = async move {
        let mut buf = vec![0u8; STREAM_CHUNK];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) => return writer.end().await.is_ok(),
                Ok(n) => {
                    if writer
                        .write(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    up_metrics.passthrough_bytes(true, n as u64);
                }
                Err(_) => {
                    writer.cancel("the client's connection failed");
                    return false;
                }
            }
        }
    };
    let down = async move {
        loop {
            match reader.next().await {
                Some(Ok(b)) => {
                    if cw.write_all(&b).await.is_err() || cw.flush().await.is_err() {
                        reader.cancel("the client's connection failed");
                        return false;
                    }
                    metrics.passthrough_bytes(false, b.len() as u64);
                }
                None => {
                    let _ = cw.shutdown().await;
                    return true;
                }
                Some(Err(_)) => return false,
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            ok = &mut up, if !up_done => {
                up_done = true;
                if !ok { break; }
            }
            ok = &mut down, if !down_done => {
                down_done = true;
                if !ok { break; }
            }
        }
    }
}
