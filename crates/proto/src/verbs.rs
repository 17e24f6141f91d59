//! The closed list of verbs: requests the engine or an operator may send, and the broker's
//! responses.
//!
//! Conversation: the client sends `Hello` first; every other request gets exactly one
//! response, except `Snapshot`, which is answered by zero or more `SnapshotBatch` frames and
//! one `SnapshotDone` (or an `Error`, which also ends the stream).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::check::Limits;
use crate::model::{IfName, Prefix, Selector, SelectorField, StateHandle, StateRecord};

/// First request on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`crate::PROTOCOL_VERSION`]; the broker refuses any other.
    pub protocol_version: u16,
    /// Free text for the audit log ("statecull-engine 0.1.0", "statecull cli"), at most
    /// [`crate::MAX_CLIENT_NAME_LEN`] bytes.
    pub client: String,
}

/// A request from a client to the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello(Hello),
    /// Stream the states matching `selector` (all states when `None`).
    Snapshot {
        selector: Option<Selector>,
    },
    /// Count the states matching each selector in one pass (the table size alone when the
    /// list is empty).
    Count {
        selectors: Vec<Selector>,
    },
    /// Kill exactly these states. `match_opposite` also kills each one's twin in the other
    /// direction, paired by the backend as its `KillMatching` pairs them (pf; conntrack
    /// entries have none); pf handles must then carry their creator id as listed.
    KillHandles {
        handles: Vec<StateHandle>,
        match_opposite: bool,
    },
    /// Kill every state matching any of the selectors. `match_opposite` also kills each
    /// victim's twin in the other direction (pf `kill_match`; conntrack entries have none).
    KillMatching {
        selectors: Vec<Selector>,
        match_opposite: bool,
    },
    /// Kill every state (on one interface where the backend supports that).
    Flush {
        interface: Option<IfName>,
    },
    /// Read the ticket of the active main filter ruleset (pf: bumped by the kernel on every
    /// ruleset commit, so a change means the ruleset was reloaded). Read-only; refused by
    /// backends without rulesets (conntrack): see [`Capabilities::ruleset_ticket`].
    RulesetTicket,
}

/// Names of the verbs, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    Hello,
    Snapshot,
    Count,
    KillHandles,
    KillMatching,
    Flush,
    RulesetTicket,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Hello => "hello",
            Verb::Snapshot => "snapshot",
            Verb::Count => "count",
            Verb::KillHandles => "kill-handles",
            Verb::KillMatching => "kill-matching",
            Verb::Flush => "flush",
            Verb::RulesetTicket => "ruleset-ticket",
        }
    }
    /// Verbs that change the state table (and are audited).
    pub fn is_mutation(self) -> bool {
        matches!(self, Verb::KillHandles | Verb::KillMatching | Verb::Flush)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Request {
    pub fn verb(&self) -> Verb {
        match self {
            Request::Hello(_) => Verb::Hello,
            Request::Snapshot { .. } => Verb::Snapshot,
            Request::Count { .. } => Verb::Count,
            Request::KillHandles { .. } => Verb::KillHandles,
            Request::KillMatching { .. } => Verb::KillMatching,
            Request::Flush { .. } => Verb::Flush,
            Request::RulesetTicket => Verb::RulesetTicket,
        }
    }
}

/// Which state-table implementation the broker drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Linux netfilter conntrack over ctnetlink.
    Conntrack,
    /// FreeBSD pf through `/dev/pf` and pf netlink.
    Pf,
    /// The in-memory model of pf (simulation, tests, benchmarks).
    PfModel,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Conntrack => "conntrack",
            BackendKind::Pf => "pf",
            BackendKind::PfModel => "pf-model",
        })
    }
}

/// What the backend can do, detected at broker start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Selector fields the backend can match on; requests using others are refused.
    pub selector_fields: Vec<SelectorField>,
    /// A mark/mask kill runs as one in-kernel filtered flush.
    pub kernel_mark_flush: bool,
    /// Address families for which tuple kills (NAT address, exact hosts, protocol; less the
    /// fields in `listing_only`) can run as one in-kernel filtered flush (conntrack `CTA_FILTER` on `IPCTNL_MSG_CT_DELETE`, when
    /// the kernel accepts it and its address matching was verified on live entries); for the
    /// others they run as a filtered dump plus batched deletes.
    pub kernel_tuple_flush: Vec<crate::model::AddressFamily>,
    /// Address families whose in-kernel tuple filter was tested on live entries and found to
    /// select the wrong states; kills for them never use it. A family in neither list has not
    /// been verified yet (no entries to test on) and is handled as unusable until it is.
    pub kernel_tuple_broken: Vec<crate::model::AddressFamily>,
    /// Selector fields the kernel's kill filter cannot express: a kill using one always runs
    /// as a listing plus kills by handle, whatever `kernel_tuple_flush` says (pf: the NAT
    /// address; FreeBSD 13/14's `DIOCKILLSTATESNV` never reads a NAT-key flag).
    pub listing_only: Vec<SelectorField>,
    /// `match_opposite` has an effect (pf); conntrack entries cover both directions.
    pub match_opposite: bool,
    /// `Flush` can be limited to an interface.
    pub flush_by_interface: bool,
    /// `RulesetTicket` is answered (pf: the kernel has a filter ruleset ticket to read;
    /// conntrack has no ruleset).
    pub ruleset_ticket: bool,
}

/// The backend, its kernel and its capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub kind: BackendKind,
    /// Kernel identification (e.g. `uname -r`).
    pub kernel: String,
    pub capabilities: Capabilities,
}

/// Reply to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub protocol_version: u16,
    /// `statecull-broker` package version.
    pub broker_version: String,
    pub backend: BackendInfo,
    pub limits: Limits,
    /// Prefixes whose states the broker never kills (from its own configuration).
    pub protected: Vec<Prefix>,
}

/// End of a snapshot stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub records: u64,
    pub elapsed_us: u64,
}

/// Reply to `Count`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReply {
    /// Matches per selector, in request order.
    pub per_selector: Vec<u64>,
    /// States matching at least one selector.
    pub matching_any: u64,
    /// States in the table.
    pub table_entries: u64,
    pub elapsed_us: u64,
}

/// Reply to `RulesetTicket`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetTicket {
    /// The active main filter ruleset's ticket (pf `pr.ticket` of `DIOCGETRULES` with an
    /// empty anchor, or `PF_GR_TICKET` of netlink `GETRULES`). Only equality means anything:
    /// a different value is a ruleset committed in between.
    pub ticket: u32,
    /// Rules in that ruleset (`pr.nr`), for logs.
    pub rules: u32,
}

/// How a kill was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillPath {
    /// One in-kernel filtered flush: the kernel walked the table once and deleted matches.
    KernelFilteredFlush,
    /// One in-kernel unfiltered flush of the whole table.
    KernelFlush,
    /// A kernel-filtered listing, matching in the broker, then batched deletes by handle.
    /// Used when the kernel cannot express the selector, when protected prefixes must be
    /// spared, or when several selectors would otherwise cost several table passes.
    DumpAndDelete,
    /// Deletes by handle only (`KillHandles`).
    Handles,
}

impl KillPath {
    pub fn name(self) -> &'static str {
        match self {
            KillPath::KernelFilteredFlush => "kernel-filtered-flush",
            KillPath::KernelFlush => "kernel-flush",
            KillPath::DumpAndDelete => "dump-and-delete",
            KillPath::Handles => "handles",
        }
    }
}

impl fmt::Display for KillPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a kill did. Every kill answers with one, whatever the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReport {
    /// Handles in a `KillHandles` request; for other kills the number of states the broker
    /// selected for deletion (0 when the kernel selected them itself).
    pub requested: u64,
    /// States removed.
    pub killed: u64,
    /// Requested or selected states that were already gone when the delete arrived.
    pub not_found: u64,
    /// Matching states left alive because they touch a protected prefix.
    pub spared: u64,
    /// Deletes the kernel refused for another reason than "not found" (see `first_error`).
    pub failed: u64,
    pub first_error: Option<String>,
    /// False when `killed` was derived in a way that concurrent table changes can disturb
    /// (an in-kernel flush returns no count, so the broker compares the table size before and
    /// after). True when every deletion was confirmed one by one.
    pub exact: bool,
    pub path: KillPath,
    /// Full passes over the state table the kernel made for this request.
    pub table_passes: u32,
    pub elapsed_us: u64,
    /// Anything else the operator should know about this kill (e.g. that the count waited
    /// for an event listener to release killed entries, or that it stopped part way).
    pub note: Option<String>,
    /// `KillMatching` only: states killed per selector, in request order; a state matching
    /// several selectors counts for the first. Sums to `killed` (a kernel flush's split is
    /// as exact as its total). Lets a caller credit each gateway without counting first.
    /// Empty for the other verbs.
    pub per_selector: Vec<u64>,
}

/// Why the broker refused or failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The frame could not be decoded; the broker closes the connection after this reply.
    Malformed,
    /// The first request on a connection must be `Hello`.
    HelloRequired,
    /// Client and broker speak different protocol versions.
    VersionMismatch,
    /// The selector would match every state.
    EmptySelector,
    /// A value in the request is invalid (prefix, mark mask, port range, name, ...).
    InvalidArgument,
    /// More selectors or handles than the broker accepts.
    TooLarge,
    /// The backend cannot do this (a selector field, `match_opposite`, flush by interface).
    Unsupported,
    /// The kernel refused or failed; nothing or only part was done (see the message).
    Backend,
    /// Too many concurrent connections.
    Busy,
    /// The broker is stopping.
    ShuttingDown,
    /// A bug in the broker.
    Internal,
    /// The peer's uid/gid is not allowed to use the broker.
    PermissionDenied,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::HelloRequired => "hello-required",
            ErrorCode::VersionMismatch => "version-mismatch",
            ErrorCode::EmptySelector => "empty-selector",
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Backend => "backend",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Internal => "internal",
            ErrorCode::PermissionDenied => "permission-denied",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<&crate::ProtoError> for ErrorReply {
    fn from(e: &crate::ProtoError) -> Self {
        ErrorReply { code: e.code(), message: e.to_string() }
    }
}

/// A response from the broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Hello(HelloReply),
    SnapshotBatch(Vec<StateRecord>),
    SnapshotDone(SnapshotDone),
    Count(CountReply),
    Killed(KillReport),
    Error(ErrorReply),
    RulesetTicket(RulesetTicket),
}
