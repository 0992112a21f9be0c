//! Stacks: compose applications deployed natively, with no compose binary on the host.
//!
//! Owns: reading a compose file ([`compose::parse`]: bounded YAML, `${VAR}` interpolation from
//! the stack's env, the supported subset with every refusal named by its path), translating it
//! into Docker Engine API bodies with compose's own names and labels ([`plan::StackPlan`]),
//! and the pure reconcile of a plan against what a host has ([`reconcile`]): the ordered
//! catalog operations that make the host match, the drift report, and the teardown.
//!
//! Must not: do I/O, sleep or read the clock; import anything from the rest of the server (it
//! depends on `protocol` and external crates only, so storage, the API and rollouts call it
//! from above, and the fuzz target compiles it on its own). The supported subset is described
//! in `docs/stacks.md`.

pub mod compose;
pub mod engine;
pub mod error;
pub mod plan;
pub mod reconcile;

mod convert;
mod hash;
mod interpolate;
mod load;
mod locate;
mod schema;
mod structure;
mod translate;

#[cfg(test)]
mod tests;

pub use compose::{parse, Stack};
pub use error::{ComposeError, ComposeErrors, ErrorKind};
pub use load::MAX_TEXT_BYTES;
pub use plan::StackPlan;
