//! What statecull's two daemons tell their service manager, in one place for both:
//!
//! * [`log`]: tracing set up for standard error, with the sd-daemon `<N>` priority prefix on
//!   every line when standard error is the journal (`JOURNAL_STREAM`), or sent to the local
//!   syslog socket with a priority per line ([`syslog`], `--log-target syslog`);
//! * [`notify`]: the sd_notify protocol (`READY=1`, `STATUS=`, `STOPPING=1`) over
//!   `NOTIFY_SOCKET`, connected before confinement, without libsystemd.
//!
//! The broker links this crate: it adds no dependency the broker does not already have.

#![forbid(unsafe_code)]

pub mod log;
pub mod notify;
pub mod syslog;

/// Everything that can go wrong between a daemon and its service manager.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `NOTIFY_SOCKET` is set to something that is not a socket address.
    #[error("NOTIFY_SOCKET={value:?}: {why}")]
    NotifyAddress { value: String, why: &'static str },
    /// The notification socket could not be reached.
    #[error("NOTIFY_SOCKET={value:?}: cannot connect: {source}")]
    NotifyConnect { value: String, source: std::io::Error },
    /// A notification could not be sent.
    #[error("cannot notify the service manager ({what}): {source}")]
    NotifySend { what: String, source: std::io::Error },
    /// The syslog socket could not be reached.
    #[error("syslog socket {path}: {source}")]
    Syslog { path: String, source: std::io::Error },
    /// The logger could not be installed (one was installed already).
    #[error("cannot set up logging: {0}")]
    Logger(String),
}
