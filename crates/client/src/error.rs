//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use statecull_proto::{ErrorReply, ProtoError};

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the broker at {}: {hint}", path.display())]
    Connect { path: PathBuf, hint: String },
    #[error("talking to the broker: {0}")]
    Io(#[from] io::Error),
    /// The broker did not answer (or read) within the client's timeout.
    #[error(
        "the broker did not answer within the timeout (a large kill can take seconds per million states; see --timeout)"
    )]
    Timeout,
    #[error("broker sent something this client cannot read: {0}")]
    Protocol(#[from] ProtoError),
    /// The broker refused or failed the request.
    #[error("broker refused: {0}")]
    Refused(ErrorReply),
    #[error("unexpected answer from the broker: {0}")]
    Unexpected(String),
    /// The conversation was driven out of order: a request while another is unanswered (one
    /// abandoned half-way), or before the Hello. The connection cannot be trusted any more.
    #[error("broker conversation out of step: {0}")]
    OutOfStep(String),
}

impl ClientError {
    /// True when the connection is unusable (as opposed to a refusal, after which the broker
    /// keeps the connection open): drop it and connect again.
    pub fn connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::Timeout
                | ClientError::Protocol(_)
                | ClientError::Unexpected(_)
                | ClientError::OutOfStep(_)
        )
    }
}

/// What the path is when it is not a socket at all ("a directory", "a regular file"), so a
/// failed connect says that instead of guessing at a stale socket. `None` for a socket, a
/// path that does not exist or cannot be examined.
pub fn not_a_socket(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    if t.is_socket() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_file() {
        Some("a regular file")
    } else {
        Some("not a socket")
    }
}

/// Say why a connect failed, in the operator's terms (also for callers that connect the
/// stream themselves and hand it to `handshake`, like the engine's dialer).
pub fn connect_error(path: &std::path::Path, e: &io::Error) -> ClientError {
    if let Some(what) = not_a_socket(path) {
        return ClientError::Connect {
            path: path.to_owned(),
            hint: format!(
                "it is {what}, not a socket; give the socket's own path (default {})",
                crate::DEFAULT_BROKER_SOCKET
            ),
        };
    }
    ClientError::Connect {
        path: path.to_owned(),
        hint: match e.kind() {
            io::ErrorKind::NotFound => {
                "no socket there; is statecull-broker running, and is --socket right?".into()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied; run as root or as a user in the socket's group".into()
            }
            io::ErrorKind::ConnectionRefused => {
                "nobody is listening (a stale socket from a stopped broker?)".into()
            }
            _ => e.to_string(),
        },
    }
}

/// A read or write that failed: a timeout is [`ClientError::Timeout`], the rest I/O.
pub(crate) fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

/// The broker closed the connection while an answer was still due.
pub(crate) fn closed() -> ClientError {
    ClientError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the broker closed the connection before answering",
    ))
}
