//! Error codes that cross the wire, and the crate's own decode error.
//!
//! Owns: the stable `code` vocabulary shared by agent, server and API clients.
//! Must not: carry secrets. Messages are shown to users as they are.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable error code. Clients branch on it; the message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The Docker object (or host, agent, command) does not exist.
    NotFound,
    /// The caller may not do this: role, allowlist, or the agent's local policy.
    Forbidden,
    /// The caller could not be authenticated.
    Unauthorized,
    /// Parameters are missing, of the wrong type, or out of range.
    InvalidParams,
    /// The operation did not finish within its deadline.
    Timeout,
    /// The host's agent is not connected.
    AgentOffline,
    /// The host enrolled itself with a token that needs approval, and no admin approved it
    /// yet: nothing reaches it until then.
    HostPending,
    /// The Docker daemon's socket is missing, unreadable or not answering.
    DockerUnreachable,
    /// The daemon answered with an error not covered by a more specific code.
    DockerError,
    /// The object is in a state that forbids the operation (name in use, container running, ...).
    Conflict,
    /// Too many requests; retry later.
    RateLimited,
    /// The operation or message is not supported by this peer or protocol version.
    Unsupported,
    /// The link dropped while the command was in flight and no result arrived in time:
    /// the command may or may not have run.
    OutcomeUnknown,
    /// A bug or an unexpected condition on the answering side.
    Internal,
    /// A code this build does not know (sent by a newer peer). Treat it like `internal`.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire spelling, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::Timeout => "timeout",
            ErrorCode::AgentOffline => "agent_offline",
            ErrorCode::HostPending => "host_pending",
            ErrorCode::DockerUnreachable => "docker_unreachable",
            ErrorCode::DockerError => "docker_error",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status the REST API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidParams => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AgentOffline | ErrorCode::HostPending | ErrorCode::Conflict => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unsupported => 501,
            ErrorCode::DockerError | ErrorCode::DockerUnreachable => 502,
            ErrorCode::Timeout | ErrorCode::OutcomeUnknown => 504,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code": "...", "message": "..."}`: the error body used in `error` messages, in error
/// `command_response`s and in REST answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Extra machine-readable context (for example the policy rule that matched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

/// Why bytes from the wire could not be decoded into an [`crate::Envelope`].
///
/// Every variant is a peer error: answer it with an `error` message (code `invalid_params`,
/// or `unsupported` for an unknown type) and keep the connection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The message is larger than [`crate::MAX_MESSAGE_SIZE`]. Drop it without parsing.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// Not valid UTF-8 or not valid JSON, or JSON nested too deeply.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope lacks `id`, `type`, `timestamp` or has them with the wrong JSON types.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    /// `type` names a message this build does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// The payload does not fit the type: a missing field or a wrong JSON type.
    #[error("invalid {kind} payload: {reason}")]
    InvalidPayload { kind: &'static str, reason: String },
    /// A message only the other side sends (an agent's own `heartbeat`, say, sent to it).
    #[error("{0} messages are not sent to this side")]
    NotForThisSide(&'static str),
}

impl DecodeError {
    /// The error body to answer the peer with.
    pub fn to_error_body(&self) -> ErrorBody {
        let code = match self {
            DecodeError::UnknownType(_) | DecodeError::NotForThisSide(_) => ErrorCode::Unsupported,
            _ => ErrorCode::InvalidParams,
        };
        ErrorBody::new(code, self.to_string())
    }
}
