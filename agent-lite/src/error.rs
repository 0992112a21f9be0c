//! Why the agent stopped without being asked to.
//!
//! Owns: the library's error type. Must not: decide what to do about an error (the binary
//! logs it and exits; tests assert on it).

/// Why [`crate::run`] stopped without a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid: fix it and start again.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A setting could not be used (state file, wake-up pipe): fix it and start again.
    #[error("{0}")]
    Setup(String),
    /// The TLS files or pin could not be used: fix the files the message names.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Reconnecting is disabled or its attempts are exhausted: the service manager may
    /// restart the agent.
    #[error("{0}")]
    GaveUp(String),
    /// A thread could not be started (out of memory or process limits).
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The server refused the enrolment token (unknown, revoked, expired, used up) or the
    /// name: it will not change by itself. Exit with [`EXIT_ENROL_REFUSED`].
    #[error("enrolment refused: {0}")]
    EnrolRefused(String),
}

/// The exit status of a refused enrolment (`EX_CONFIG`), which the systemd unit does not
/// restart.
pub const EXIT_ENROL_REFUSED: u8 = 78;

pub type Result<T, E = Error> = std::result::Result<T, E>;
