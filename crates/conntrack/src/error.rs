//! The crate's one error type.

/// What can go wrong talking to conntrack.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    /// A message from the kernel that does not parse (a bug or a kernel we do not know).
    #[error("malformed ctnetlink message: {0}")]
    Codec(String),
    /// The kernel answered a request with an error.
    #[error("kernel refused {op}: {}", errno_text(*.errno))]
    Kernel { op: &'static str, errno: i32 },
    /// A socket call failed.
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The request cannot be carried out by this backend or kernel.
    #[error("{0}")]
    Unsupported(String),
    /// The consumer of a snapshot stopped (e.g. the client went away); the dump was abandoned.
    #[error("snapshot consumer stopped: {0}")]
    Aborted(String),
    /// The dump was cut short or overran; its result would be incomplete.
    #[error("incomplete dump: {0}")]
    Incomplete(String),
}

impl From<statecull_netlink::NlError> for CtError {
    fn from(e: statecull_netlink::NlError) -> Self {
        Self::Codec(e.0)
    }
}

impl CtError {
    pub(crate) fn codec(why: impl Into<String>) -> Self {
        Self::Codec(why.into())
    }
    pub(crate) fn io(op: &'static str, source: std::io::Error) -> Self {
        Self::Io { op, source }
    }
}

/// "EPERM (Operation not permitted)" for a positive errno.
pub fn errno_text(errno: i32) -> String {
    let name = match errno {
        1 => "EPERM",
        2 => "ENOENT",
        12 => "ENOMEM",
        16 => "EBUSY",
        22 => "EINVAL",
        90 => "EMSGSIZE",
        95 => "EOPNOTSUPP",
        105 => "ENOBUFS",
        _ => "errno",
    };
    format!("{name} ({}) {}", errno, std::io::Error::from_raw_os_error(errno))
}
