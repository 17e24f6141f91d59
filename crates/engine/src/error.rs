//! The engine's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Policy(#[from] statecull_policy::PolicyError),
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("broker: {0}")]
    Broker(#[from] statecull_client::ClientError),
    /// A background broker request (a count) was given up so that a kill does not wait for
    /// it, or competes with nothing.
    #[error("background broker request abandoned: a kill has priority")]
    Abandoned,
    /// An ICMP probe socket could not be opened or is not what the engine requires.
    #[error("gateway {gateway}: probe socket: {message}")]
    ProbeSocket { gateway: String, message: String },
    /// A received ICMP packet that does not hold together (`icmp.rs`).
    #[error("ICMP packet: {0}")]
    IcmpPacket(String),
    /// A dpinger status line or socket problem.
    #[error("dpinger {path}: {message}")]
    Dpinger { path: String, message: String },
    /// The engine (or the system) has no file descriptor left: whatever needed one (a
    /// dpinger poll, a broker connection) did not happen. Reported loudly, never taken for a
    /// gateway's health.
    #[error(
        "{what}: {source}: the engine is OUT OF FILE DESCRIPTORS, so this was not done (raise \
         LimitNOFILE=, or find what holds the descriptors)"
    )]
    Exhausted { what: String, source: std::io::Error },
    /// rtnetlink (route watching) failed.
    #[error("route watcher: {0}")]
    Routes(String),
    /// A control-socket request that cannot be served.
    #[error("{0}")]
    Control(String),
    #[error("invalid setting: {0}")]
    Config(String),
}

impl EngineError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io { what: what.into(), source }
    }
}
