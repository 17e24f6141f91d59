//! statecull's wire protocol between the engine (or an operator's CLI) and the broker.
//!
//! * [`model`]: addresses, prefixes, selectors, state keys, handles and records;
//! * [`verbs`]: the closed list of requests and responses;
//! * [`check`]: what makes a decoded value acceptable ([`Selector::check`] and friends);
//! * [`frame`]: length-prefixed bincode frames, bounded and strict;
//! * [`listing`]: what every backend does with a listing (snapshot batches, per-selector
//!   counts, protected-prefix checks), written once;
//! * [`text`]: untrusted text clipped and escaped for messages and logs;
//! * [`paths`]: default sockets and configuration files, per target OS.
//!
//! This crate does no I/O and contains no `unsafe`.
#![forbid(unsafe_code)]

pub mod check;
mod error;
pub mod frame;
pub mod listing;
pub mod model;
pub mod paths;
pub mod text;
pub mod verbs;

pub use check::{
    CheckedHandle, CheckedIfName, CheckedRequest, CheckedSelector, Limits, Unsupported,
};
pub use error::ProtoError;
pub use model::{
    AddressFamily, Counters, IfName, L4, Label, MarkMatch, PfDirection, PortRange, Prefix,
    Selector, SelectorField, StateDetail, StateHandle, StateKey, StateRecord, ipproto,
};
pub use verbs::{
    BackendInfo, BackendKind, Capabilities, CountReply, ErrorCode, ErrorReply, Hello, HelloReply,
    KillPath, KillReport, Request, Response, RulesetTicket, SnapshotDone, Verb,
};

/// Where the broker listens unless told otherwise (the broker's default and the clients').
pub const DEFAULT_BROKER_SOCKET: &str = paths::BROKER_SOCKET;
/// Version of this protocol; a broker refuses clients that announce another.
/// 2: kill reports carry per-selector counts.
/// 3: `KillHandles` carries `match_opposite`; capabilities list `listing_only` fields; the
/// `RulesetTicket` verb and `Capabilities::ruleset_ticket`.
pub const PROTOCOL_VERSION: u16 = 3;
/// Bytes in a frame header (the big-endian payload length).
pub const HEADER_LEN: usize = 4;
/// Largest frame payload: 1 MiB.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// Most selectors in one request.
pub const MAX_SELECTORS: u32 = 64;
/// Most handles in one `KillHandles` request. A batch of the largest handles (IPv6) stays
/// well under [`MAX_FRAME_LEN`]; a test proves it.
pub const MAX_HANDLES: u32 = 8192;
/// Most records in one snapshot batch; a batch of the largest records fits one frame.
pub const MAX_SNAPSHOT_BATCH: u32 = 2048;
/// A broker closes a connection that has said Hello and then sends no request for this many
/// seconds: connection slots are few, and an idle peer must not hold one forever. A client
/// that keeps a connection (the engine) reconnects instead of reusing one idle for more
/// than half of this, so a request never races the broker's close.
pub const BROKER_IDLE_TIMEOUT_SECS: u64 = 120;
/// Longest client name in `Hello`.
pub const MAX_CLIENT_NAME_LEN: usize = 64;
