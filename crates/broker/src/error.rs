//! The crate's one error type.

use statecull_proto::{ErrorCode, ErrorReply, ProtoError};

/// Everything the broker can fail at, with the wire code a client sees.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Bad configuration or command line; the broker does not start.
    #[error("configuration: {0}")]
    Config(String),
    /// A system call around the listener failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A request that is invalid or refused before it reaches the backend.
    #[error(transparent)]
    Request(#[from] ProtoError),
    /// The backend cannot do what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// The backend (kernel) failed.
    #[error("{0}")]
    Backend(String),
    /// Refused by the conversation rules (Hello first, not while stopping).
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
}

impl BrokerError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// The answer a client gets for this error.
    pub fn reply(&self) -> ErrorReply {
        let code = match self {
            BrokerError::Request(e) => e.code(),
            BrokerError::Unsupported(_) => ErrorCode::Unsupported,
            BrokerError::Backend(_) => ErrorCode::Backend,
            BrokerError::Refused { code, .. } => *code,
            BrokerError::Config(_) | BrokerError::Io { .. } => ErrorCode::Internal,
        };
        ErrorReply { code, message: self.to_string() }
    }
}
