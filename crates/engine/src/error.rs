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
    Broker(#[from] statecull_cli::client::ClientError),
    /// An ICMP probe socket could not be opened or is not what the engine requires.
    #[error("gateway {gateway}: probe socket: {message}")]
    ProbeSocket { gateway: String, message: String },
    /// A dpinger status line or socket problem.
    #[error("dpinger {path}: {message}")]
    Dpinger { path: String, message: String },
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
