//! docker-ctl's wire protocol, shared by the agent and the server.
//!
//! - [`message`]: the envelope `{id, type, timestamp, payload}` and typed payloads.
//! - [`ops`]: the operation catalog with typed params.
//! - [`docker`]: the one mapping from operations to Docker Engine API requests and from the
//!   daemon's answers to results, as pure functions driven by a transport.
//! - [`error`]: stable error codes.
//! - [`endpoint`]: where a Docker daemon listens (`unix://`, `tcp://`, `https://`).
//!
//! This crate does no I/O and depends on serde only: no tokio, no HTTP client.

pub mod docker;
pub mod endpoint;
pub mod error;
pub mod message;
pub mod ops;
pub mod passthrough;
pub mod secret;
pub mod signing;
pub mod time;

pub use docker::{DockerRequest, DockerResponse, Plan, Step, Transport};
pub use error::{DecodeError, ErrorBody, ErrorCode};
pub use message::*;
pub use ops::{Access, Operation, OperationInfo, CATALOG, OPERATION_NAMES};
pub use secret::Secret;

/// `Result` with the protocol's error body.
pub type Result<T, E = ErrorBody> = std::result::Result<T, E>;
