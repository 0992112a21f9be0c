//! The adapter for hosts whose agent is held by another replica: the command or the Docker
//! API exchange is forwarded, over HTTP, to that replica's internal endpoint
//! (`/internal/v1/hosts/{id}/run` and `/internal/v1/hosts/{id}/docker/...`), which runs it on
//! its own agent adapter.
//!
//! The request carries the cluster credential (the holder refuses anything else) and who
//! asked, for the holder's log. Bodies stream both ways (hyper's flow control: nothing is
//! buffered whole), and a `101` becomes a tunnel to the holder's upgraded connection.
//!
//! When the holder cannot be reached (it died, or is cut off), the adapter waits, within the
//! request's timeout, for the agent to be held anywhere again: on this replica (the request
//! then runs here) or on another live replica (forwarded there). A command is retried only
//! when it never reached the holder; once sent, a broken exchange is `outcome_unknown`, so no
//! command runs twice. A stream with a request body is not retried (the body is gone).
//!
//! Owns: forwarding and that wait. Must not: decide who holds an agent (the cluster module
//! does) or run anything itself.

use axum::body::Body;
use axum::http::header;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use protocol::{ErrorBody, ErrorCode, Operation};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

use super::agent::AgentHostAdapter;
use super::{Call, HostAdapter, Route, StreamRequest, StreamResponse, UpgradedTunnel};
use crate::agents::AgentManager;
use crate::cluster::{credential, Cluster, Holder};
use crate::reply::{self, Outcome};

/// The header naming who asked (`NAME (ROLE)`), for the holder's log.
pub const CALLER_HEADER: &str = "x-docker-ctl-caller";

/// The response header of a holder that no longer holds the agent (with status 503): the
/// request was not run there, so it may go elsewhere.
pub const NOT_HELD_HEADER: &str = "x-docker-ctl-not-held";

/// How often a request whose holder is unreachable looks for the agent again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The HTTP client replicas forward with (the cluster's, one pool for every forward adapter).
pub type ForwardClient = crate::cluster::transport::ReplicaClient;

pub struct ForwardHostAdapter {
    pub(super) client: ForwardClient,
    pub(super) cluster: Cluster,
    pub(super) agents: AgentManager,
    pub(super) host_id: String,
    pub(super) preferred: Option<String>,
    pub(super) agent_id: Option<String>,
    pub(super) holder: Holder,
    /// How long a Docker API exchange waits for its response head.
    pub(super) stream_timeout: Duration,
}

/// Where a request goes after its holder could not be reached.
enum Next {
    Here(AgentHostAdapter),
    There(Holder),
}

impl ForwardHostAdapter {
    /// The request to `path` on `holder`, with the credential and the caller.
    fn request(
        &self,
        holder: &Holder,
        method: axum::http::Method,
        path: &str,
        caller: Option<&str>,
    ) -> axum::http::request::Builder {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", holder.replica.advertise_url))
            .header(credential::HEADER, self.cluster.credential().expose());
        if let Some(c) = caller.and_then(|c| axum::http::HeaderValue::from_str(c).ok()) {
            b = b.header(CALLER_HEADER, c);
        }
        b
    }

    /// Waits until `deadline` for the agent to be held by this replica or by a live replica
    /// other than `gone`.
    async fn next_holder(&self, gone: &Holder, deadline: Instant) -> Option<Next> {
        loop {
            if self
                .agents
                .online_agent_for_host(&self.host_id, self.preferred.as_deref())
                .is_some()
            {
                return Some(Next::Here(AgentHostAdapter::new(
                    self.agents.clone(),
                    self.host_id.clone(),
                    self.preferred.clone(),
                    self.agent_id.clone(),
                )));
            }
            if let Some(h) = self
                .cluster
                .holder_of_host(&self.host_id, self.preferred.as_deref())
            {
                if h.replica.id != gone.replica.id || h.session_id != gone.session_id {
                    return Some(Next::There(h));
                }
            }
            if Instant::now() + RETRY_EVERY > deadline {
                return None;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Runs `op` on `holder`. `Err(())`: the holder could not be reached (nothing was sent).
    async fn run_on(&self, holder: &Holder, op: &Operation, call: &Call) -> Result<Outcome, ()> {
        let body = json!({
            "operation": op,
            "command_id": call.id,
            "idempotency_key": call.idempotency_key,
            "timeout_ms": call.timeout.as_millis() as u64,
        });
        let path = format!("/internal/v1/hosts/{}/run", self.host_id);
        let req = self
            .request(
                holder,
                axum::http::Method::POST,
                &path,
                call.caller.as_deref(),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|_| ())?;
        // The holder answers within the command's timeout; a little more for the hop.
        let wait = call.timeout + Duration::from_secs(5);
        let resp = match tokio::time::timeout(wait, self.client.request(req)).await {
            Err(_) => return Ok(Err(timeout(call.timeout))),
            Ok(Err(e)) if e.is_connect() => return Err(()),
            Ok(Err(e)) => return Ok(Err(lost(&holder.replica.id, &e))),
            Ok(Ok(r)) if r.headers().contains_key(NOT_HELD_HEADER) => return Err(()),
            Ok(Ok(r)) => r,
        };
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(Err(lost(&holder.replica.id, &e))),
        };
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(reply::decode(&doc).unwrap_or_else(|| {
            Err(ErrorBody::new(
                ErrorCode::OutcomeUnknown,
                format!("replica {} answered with no outcome", holder.replica.id),
            ))
        }))
    }

    async fn run_forwarded(&self, op: &Operation, call: &Call) -> Outcome {
        let deadline = Instant::now() + call.timeout;
        let mut holder = self.holder.clone();
        loop {
            match self.run_on(&holder, op, call).await {
                Ok(outcome) => return outcome,
                Err(()) => match self.next_holder(&holder, deadline).await {
                    Some(Next::Here(local)) => return local.run(op, call).await,
                    Some(Next::There(h)) => holder = h,
                    None => return Err(unreachable_holder(&holder)),
                },
            }
        }
    }

    /// Opens the exchange on `holder`. `Err(None)`: the holder could not be reached and the
    /// request is given back (it had no body).
    async fn stream_on(
        &self,
        holder: &Holder,
        req: StreamRequest,
    ) -> Result<StreamResponse, (ErrorBody, Option<StreamRequest>)> {
        let path = format!("/internal/v1/hosts/{}/docker{}", self.host_id, req.target);
        let mut b = self.request(holder, req.method.clone(), &path, req.caller.as_deref());
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        if req.upgrade {
            b = b
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "tcp");
        }
        let (body, retry) = match req.body {
            Some(body) => (body, None),
            None => (Body::empty(), Some(StreamRequest { body: None, ..req })),
        };
        let r = b.body(body).map_err(|e| {
            (
                ErrorBody::invalid_params(format!("invalid request: {e}")),
                None,
            )
        })?;
        // The holder applies the head timeout once the body is sent; this bounds the hop.
        let wait = self.stream_timeout + Duration::from_secs(5);
        let mut resp = match tokio::time::timeout(wait, self.client.request(r)).await {
            Err(_) => return Err((timeout(self.stream_timeout), None)),
            Ok(Err(e)) if e.is_connect() => {
                return Err((unreachable_holder(holder), retry));
            }
            Ok(Err(e)) => return Err((lost(&holder.replica.id, &e), None)),
            Ok(Ok(r)) if r.headers().contains_key(NOT_HELD_HEADER) => {
                return Err((unreachable_holder(holder), retry));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        if status == 101 {
            let upgraded = hyper::upgrade::on(&mut resp);
            return Ok(StreamResponse {
                status,
                headers,
                body: Body::empty(),
                tunnel: Some(Box::new(UpgradedTunnel {
                    upgrade: upgraded,
                    peer: "the holding replica",
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

    async fn stream_forwarded(&self, req: StreamRequest) -> Result<StreamResponse, ErrorBody> {
        let deadline = Instant::now() + self.stream_timeout;
        let mut holder = self.holder.clone();
        let mut req = req;
        loop {
            match self.stream_on(&holder, req).await {
                Ok(r) => return Ok(r),
                Err((e, None)) => return Err(e),
                Err((e, Some(back))) => match self.next_holder(&holder, deadline).await {
                    Some(Next::Here(local)) => return local.open_stream(back).await,
                    Some(Next::There(h)) => {
                        holder = h;
                        req = back;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

impl HostAdapter for ForwardHostAdapter {
    fn route(&self) -> Route {
        Route {
            via: "replica",
            target: Some(self.holder.agent_ref.clone()),
            agent_id: self.agent_id.clone(),
            queueable: true,
            online: self.holder.alive(),
        }
    }

    fn run<'a>(&'a self, op: &'a Operation, call: &'a Call) -> BoxFuture<'a, Outcome> {
        Box::pin(self.run_forwarded(op, call))
    }

    fn open_stream(&self, req: StreamRequest) -> BoxFuture<'_, Result<StreamResponse, ErrorBody>> {
        Box::pin(self.stream_forwarded(req))
    }
}

fn timeout(t: Duration) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Timeout,
        format!("no answer within {} s", t.as_secs_f64()),
    )
}

/// The exchange with the holder broke after the request was sent: what happened there is
/// not known.
fn lost(replica: &str, e: &dyn std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::OutcomeUnknown,
        format!("the connection to replica {replica}, which holds the agent, broke: {e}"),
    )
}

fn unreachable_holder(holder: &Holder) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::AgentOffline,
        format!(
            "replica {}, which held the agent, cannot be reached, and the agent did not connect elsewhere in time",
            holder.replica.id
        ),
    )
}
