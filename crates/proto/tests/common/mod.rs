//! proptest strategies for every wire type, shared by the integration tests.
//!
//! Values are deliberately *unchecked*: decoding does not validate, so the codec must
//! round-trip any value of the right shape (over-long prefixes, mixed families, names with
//! `/`, ...). Collections are kept short so every message fits one frame.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CountReply, Counters, ErrorCode,
    ErrorReply, Hello, HelloReply, IfName, KillPath, KillReport, L4, Label, Limits, MarkMatch,
    PortRange, Prefix, Request, Response, RulesetTicket, Selector, SelectorField, SnapshotDone,
    StateDetail, StateHandle, StateKey, StateRecord,
};

pub(crate) const ALL_ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::Malformed,
    ErrorCode::HelloRequired,
    ErrorCode::VersionMismatch,
    ErrorCode::EmptySelector,
    ErrorCode::InvalidArgument,
    ErrorCode::TooLarge,
    ErrorCode::Unsupported,
    ErrorCode::Backend,
    ErrorCode::Busy,
    ErrorCode::ShuttingDown,
    ErrorCode::Internal,
];

pub(crate) const ALL_KILL_PATHS: [KillPath; 4] = [
    KillPath::KernelFilteredFlush,
    KillPath::KernelFlush,
    KillPath::DumpAndDelete,
    KillPath::Handles,
];

/// Any text, including control characters and non-ASCII, kept short.
pub(crate) fn text() -> impl Strategy<Value = String> {
    "(?s).{0,24}"
}

pub(crate) fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        // Edge values the decoder must not treat specially.
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Just(IpAddr::V4(Ipv4Addr::BROADCAST)),
        Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        Just(IpAddr::V6(Ipv6Addr::from(u128::MAX))),
    ]
}

pub(crate) fn family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![Just(AddressFamily::Ipv4), Just(AddressFamily::Ipv6)]
}

/// Any prefix, valid or not (length up to 255, host bits set).
pub(crate) fn prefix() -> impl Strategy<Value = Prefix> {
    (ip(), any::<u8>()).prop_map(|(addr, len)| Prefix { addr, len })
}

pub(crate) fn mark() -> impl Strategy<Value = MarkMatch> {
    (any::<u32>(), any::<u32>()).prop_map(|(value, mask)| MarkMatch { value, mask })
}

pub(crate) fn port_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(first, last)| PortRange { first, last })
}

pub(crate) fn if_name() -> impl Strategy<Value = IfName> {
    text().prop_map(IfName)
}

pub(crate) fn label() -> impl Strategy<Value = Label> {
    text().prop_map(Label)
}

/// A selector with every combination of set and unset fields.
pub(crate) fn selector() -> impl Strategy<Value = Selector> {
    (
        option::of(family()),
        option::of(any::<u8>()),
        option::of(prefix()),
        option::of(prefix()),
        option::of(port_range()),
        option::of(port_range()),
        option::of(mark()),
        option::of(ip()),
        option::of(ip()),
        option::of(if_name()),
        option::of(label()),
    )
        .prop_map(
            |(
                family,
                proto,
                src,
                dst,
                src_port,
                dst_port,
                mark,
                nat_addr,
                gateway,
                interface,
                label,
            )| {
                Selector {
                    family,
                    proto,
                    src,
                    dst,
                    src_port,
                    dst_port,
                    mark,
                    nat_addr,
                    gateway,
                    interface,
                    label,
                }
            },
        )
}

pub(crate) fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(src, dst)| L4::Ports { src, dst }),
        (any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(id, kind, code)| L4::Icmp {
            id,
            kind,
            code
        }),
        Just(L4::None),
    ]
}

pub(crate) fn state_key() -> impl Strategy<Value = StateKey> {
    (any::<u8>(), ip(), ip(), l4()).prop_map(|(proto, src, dst, l4)| StateKey {
        proto,
        src,
        dst,
        l4,
    })
}

pub(crate) fn state_handle() -> impl Strategy<Value = StateHandle> {
    prop_oneof![
        (state_key(), any::<u32>(), any::<u16>())
            .prop_map(|(orig, id, zone)| StateHandle::Conntrack { orig, id, zone }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(id, creator_id)| StateHandle::Pf { id, creator_id }),
    ]
}

pub(crate) fn counters() -> impl Strategy<Value = Counters> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(orig_packets, orig_bytes, reply_packets, reply_bytes)| Counters {
            orig_packets,
            orig_bytes,
            reply_packets,
            reply_bytes,
        },
    )
}

pub(crate) fn state_detail() -> impl Strategy<Value = StateDetail> {
    prop_oneof![
        (state_key(), any::<u32>(), any::<u16>(), any::<u32>(), option::of(any::<u8>())).prop_map(
            |(reply, mark, zone, status, tcp_state)| StateDetail::Conntrack {
                reply,
                mark,
                zone,
                status,
                tcp_state,
            },
        ),
        (
            any::<bool>(),
            text(),
            text(),
            state_key(),
            state_key(),
            option::of(ip()),
            option::of(any::<u32>()),
        )
            .prop_map(|(out, interface, orig_interface, wire, stack, gateway, rule)| {
                StateDetail::Pf {
                    direction: if out {
                        statecull_proto::PfDirection::Out
                    } else {
                        statecull_proto::PfDirection::In
                    },
                    interface,
                    orig_interface,
                    wire,
                    stack,
                    gateway,
                    rule,
                }
            }),
    ]
}

pub(crate) fn state_record() -> impl Strategy<Value = StateRecord> {
    (state_handle(), state_key(), state_detail(), option::of(any::<u32>()), option::of(counters()))
        .prop_map(|(handle, key, detail, expires_in_secs, counters)| StateRecord {
            handle,
            key,
            detail,
            expires_in_secs,
            counters,
        })
}

pub(crate) fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), text()).prop_map(|(protocol_version, client)| Hello { protocol_version, client })
}

pub(crate) fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        hello().prop_map(Request::Hello),
        option::of(selector()).prop_map(|selector| Request::Snapshot { selector }),
        vec(selector(), 0..6).prop_map(|selectors| Request::Count { selectors }),
        (vec(state_handle(), 0..12), any::<bool>())
            .prop_map(|(handles, match_opposite)| Request::KillHandles { handles, match_opposite }),
        (vec(selector(), 0..6), any::<bool>()).prop_map(|(selectors, match_opposite)| {
            Request::KillMatching { selectors, match_opposite }
        }),
        option::of(if_name()).prop_map(|interface| Request::Flush { interface }),
        Just(Request::RulesetTicket),
    ]
}

pub(crate) fn selector_field() -> impl Strategy<Value = SelectorField> {
    select(SelectorField::ALL.to_vec())
}

pub(crate) fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        vec(selector_field(), 0..12),
        any::<bool>(),
        vec(family(), 0..3),
        vec(family(), 0..3),
        vec(selector_field(), 0..3),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                selector_fields,
                kernel_mark_flush,
                kernel_tuple_flush,
                kernel_tuple_broken,
                listing_only,
                match_opposite,
                flush_by_interface,
                ruleset_ticket,
            )| Capabilities {
                selector_fields,
                kernel_mark_flush,
                kernel_tuple_flush,
                kernel_tuple_broken,
                listing_only,
                match_opposite,
                flush_by_interface,
                ruleset_ticket,
            },
        )
}

pub(crate) fn backend_info() -> impl Strategy<Value = BackendInfo> {
    (
        prop_oneof![
            Just(BackendKind::Conntrack),
            Just(BackendKind::Pf),
            Just(BackendKind::PfModel)
        ],
        text(),
        capabilities(),
    )
        .prop_map(|(kind, kernel, capabilities)| BackendInfo { kind, kernel, capabilities })
}

pub(crate) fn limits() -> impl Strategy<Value = Limits> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(max_frame_len, max_selectors, max_handles, max_snapshot_batch)| Limits {
            max_frame_len,
            max_selectors,
            max_handles,
            max_snapshot_batch,
        },
    )
}

pub(crate) fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (any::<u16>(), text(), backend_info(), limits(), vec(prefix(), 0..8)).prop_map(
        |(protocol_version, broker_version, backend, limits, protected)| HelloReply {
            protocol_version,
            broker_version,
            backend,
            limits,
            protected,
        },
    )
}

pub(crate) fn snapshot_done() -> impl Strategy<Value = SnapshotDone> {
    (any::<u64>(), any::<u64>())
        .prop_map(|(records, elapsed_us)| SnapshotDone { records, elapsed_us })
}

pub(crate) fn count_reply() -> impl Strategy<Value = CountReply> {
    (vec(any::<u64>(), 0..16), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(per_selector, matching_any, table_entries, elapsed_us)| CountReply {
            per_selector,
            matching_any,
            table_entries,
            elapsed_us,
        },
    )
}

pub(crate) fn kill_path() -> impl Strategy<Value = KillPath> {
    select(ALL_KILL_PATHS.to_vec())
}

pub(crate) fn kill_report() -> impl Strategy<Value = KillReport> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        option::of(text()),
        any::<bool>(),
        kill_path(),
        any::<u32>(),
        (any::<u64>(), option::of(text()), vec(any::<u64>(), 0..70)),
    )
        .prop_map(
            |(
                requested,
                killed,
                not_found,
                spared,
                failed,
                first_error,
                exact,
                path,
                table_passes,
                (elapsed_us, note, per_selector),
            )| KillReport {
                requested,
                killed,
                not_found,
                spared,
                failed,
                first_error,
                exact,
                path,
                table_passes,
                elapsed_us,
                note,
                per_selector,
            },
        )
}

pub(crate) fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ALL_ERROR_CODES.to_vec())
}

pub(crate) fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (error_code(), text()).prop_map(|(code, message)| ErrorReply { code, message })
}

pub(crate) fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        hello_reply().prop_map(Response::Hello),
        vec(state_record(), 0..6).prop_map(Response::SnapshotBatch),
        snapshot_done().prop_map(Response::SnapshotDone),
        count_reply().prop_map(Response::Count),
        kill_report().prop_map(Response::Killed),
        error_reply().prop_map(Response::Error),
        (any::<u32>(), any::<u32>())
            .prop_map(|(ticket, rules)| Response::RulesetTicket(RulesetTicket { ticket, rules })),
    ]
}

/// Index of a response variant (the responses have no `Verb`), for coverage checks.
pub(crate) fn response_variant(r: &Response) -> usize {
    match r {
        Response::Hello(_) => 0,
        Response::SnapshotBatch(_) => 1,
        Response::SnapshotDone(_) => 2,
        Response::Count(_) => 3,
        Response::Killed(_) => 4,
        Response::Error(_) => 5,
        Response::RulesetTicket(_) => 6,
    }
}
