//! docker-ctl's wire protocol, shared by the agent and the server.
//!
//! - [`message`]: the envelope `{id, type, timestamp, payload}` and typed payloads.
//! - [`ops`]: the operation catalog with typed params.
//! - [`mapping`]: the one mapping from operations to Docker Engine API requests and from the
//!   daemon's answers to results, as pure functions driven by a transport.
//! - [`passthrough`]: the allowlist of raw Docker Engine API routes.
//! - [`endpoint`]: where a Docker daemon listens (`unix://`, `tcp://`, `https://`).
//! - [`signing`]: optional message signing, its key length and nonce cache.
//! - [`nesting`]: how deeply JSON text nests, found before parsing it.
//! - [`error`]: stable error codes.
//! - [`version`]: this build's version string ([`VERSION`], set by `DOCKER_CTL_VERSION`).
//! - `minisign` (feature `minisign`): release signatures and their streaming verifier.
//!
//! This crate does no I/O and depends on serde only (and, with the `minisign` feature, on
//! ring, which rustls already links): no tokio, no HTTP client.

pub mod endpoint;
pub mod error;
pub mod mapping;
pub mod message;
#[cfg(feature = "minisign")]
pub mod minisign;
pub mod nesting;
pub mod ops;
pub mod passthrough;
pub mod secret;
pub mod signing;
pub mod time;
pub mod version;

pub use error::{DecodeError, ErrorBody, ErrorCode};
pub use mapping::{DockerRequest, DockerResponse, Plan, Step, Transport};
pub use message::*;
pub use ops::{Access, Operation, OperationInfo, CATALOG, OPERATION_NAMES};
pub use secret::Secret;
pub use version::VERSION;

/// `Result` with the protocol's error body.
pub type Result<T, E = ErrorBody> = std::result::Result<T, E>;
