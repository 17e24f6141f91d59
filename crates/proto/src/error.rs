//! The crate's one error type.

use crate::verbs::ErrorCode;

/// Everything that can go wrong in parsing, checking, encoding or decoding protocol values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Operator or policy text that does not parse.
    #[error("invalid {what} {}: {why}", crate::text::clip(input))]
    Parse { what: &'static str, input: String, why: String },
    /// A selector that would not narrow the table.
    #[error("empty selector: {0}")]
    EmptySelector(String),
    /// A value that decoded but makes no sense (bad prefix, mark mask, port range, ...).
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// A list longer than the protocol allows.
    #[error("too many {what}: {count} (at most {max} per request)")]
    TooMany { what: &'static str, count: usize, max: usize },
    /// A length prefix above the frame limit; refused before anything is allocated.
    #[error("frame length {len} exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    /// A zero length prefix (no message can be empty).
    #[error("frame length is zero")]
    EmptyFrame,
    /// Bytes that are not a message of the expected type (including unknown variants).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message followed by extra bytes inside its frame.
    #[error("{trailing} trailing byte(s) after a {consumed}-byte message")]
    TrailingBytes { consumed: usize, trailing: usize },
    /// Something the backend does not offer (a selector field, a flush by interface).
    #[error("this backend does not support {what} (supported selector fields: {supported})")]
    Unsupported { what: crate::check::Unsupported, supported: String },
    /// A message that cannot be framed (too large once encoded).
    #[error("message cannot be encoded: {0}")]
    Encode(String),
}

impl ProtoError {
    pub(crate) fn parse(what: &'static str, input: &str, why: impl Into<String>) -> Self {
        Self::Parse { what, input: input.to_owned(), why: why.into() }
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        Self::Invalid { what, why: why.into() }
    }

    /// The wire error code a broker answers with for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Parse { .. } | Self::Invalid { .. } => ErrorCode::InvalidArgument,
            Self::EmptySelector(_) => ErrorCode::EmptySelector,
            Self::Unsupported { .. } => ErrorCode::Unsupported,
            Self::TooMany { .. } => ErrorCode::TooLarge,
            Self::FrameTooLarge { .. }
            | Self::EmptyFrame
            | Self::Malformed(_)
            | Self::TrailingBytes { .. } => ErrorCode::Malformed,
            Self::Encode(_) => ErrorCode::Internal,
        }
    }

    /// The explanation without the variant's prefix, for nesting in another message.
    pub fn why(&self) -> String {
        match self {
            Self::Parse { why, .. } | Self::Invalid { why, .. } => why.clone(),
            other => other.to_string(),
        }
    }
}
