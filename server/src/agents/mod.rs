//! Agents that dial in: the registry of their sessions ([`AgentManager`]), the WebSocket
//! endpoint they dial ([`ws`]), and the Docker API streams multiplexed over a session
//! ([`streams`]).
//!
//! Owns: every live session and what travels on it: commands sent now (and sent again after a
//! reconnection), queued commands handed over by the layer above through an [`AgentLink`],
//! answers matched to their waiters, streams, settings pushed with `config_update`, and
//! shutdown of every session. Callers ask the manager ("call this on host H's agent", "is X
//! online?", "disconnect X"); none of them sees the registry. That keeps "where is this
//! agent's session" in one place, so a later multi-replica version can route to a session
//! held by another replica behind the same interface.
//! Must not: know HTTP or the REST API, keep the command history, or import the layers above
//! (`hosts`, `commands`, the wiring): upward news leaves as a [`Signal`].

mod manager;
pub mod sampling;
mod session;
pub mod signing;
pub mod streams;
pub mod ws;

pub use manager::{
    effective_settings, not_connected, AgentLink, AgentManager, Call, Delivered, LiveStatus,
    Outbound, Signal,
};
pub use session::Session;
pub use streams::{AgentStream, StreamHead, StreamOpen, StreamReader, StreamWriter};
pub use ws::AgentEndpoint;
