//! Every wire value survives encode -> frame -> decode unchanged, the frame header states the
//! payload length, and `encoded_len` predicts the payload size.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use statecull_proto::frame::{
    decode_request, decode_response, encode_request, encode_response, encoded_len, payload_len,
};
use statecull_proto::{
    AddressFamily, CountReply, ErrorCode, ErrorReply, HEADER_LEN, Hello, IfName, KillPath,
    KillReport, L4, Request, Response, Selector, SnapshotDone, StateHandle, StateKey, ipproto,
};

/// Split a frame into header and payload and check the header against the payload.
fn split_frame(frame: &[u8]) -> Result<&[u8], TestCaseError> {
    prop_assert!(frame.len() > HEADER_LEN, "frame of {} bytes has no payload", frame.len());
    let (header, payload) = frame.split_at(HEADER_LEN);
    let header: [u8; HEADER_LEN] = header.try_into().unwrap();
    let announced = u32::try_from(payload.len()).unwrap().to_be_bytes();
    prop_assert_eq!(header, announced, "header must be the payload length, big-endian");
    prop_assert_eq!(payload_len(header)?, payload.len());
    Ok(payload)
}

fn request_roundtrip(req: &Request) -> Result<(), TestCaseError> {
    let frame = encode_request(req)?;
    let payload = split_frame(&frame)?;
    prop_assert_eq!(encoded_len(req)?, payload.len());
    let back = decode_request(payload)?;
    prop_assert_eq!(&back, req);
    prop_assert_eq!(back.verb(), req.verb());
    Ok(())
}

fn response_roundtrip(resp: &Response) -> Result<(), TestCaseError> {
    let frame = encode_response(resp)?;
    let payload = split_frame(&frame)?;
    prop_assert_eq!(encoded_len(resp)?, payload.len());
    prop_assert_eq!(&decode_response(payload)?, resp);
    Ok(())
}

/// Bytes of bincode's varint encoding of a length (lengths here stay far below 2^32).
fn varint_len(n: usize) -> usize {
    match n {
        0..=250 => 1,
        251..=0xffff => 3,
        _ => 5,
    }
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn requests_roundtrip(req in request()) {
        request_roundtrip(&req)?;
    }

    #[test]
    fn responses_roundtrip(resp in response()) {
        response_roundtrip(&resp)?;
    }

    /// Each component's `encoded_len` adds up to the message's: the size function is usable
    /// for batch sizing, not only for whole messages.
    #[test]
    fn encoded_len_is_additive(
        sel in selector(),
        sels in proptest::collection::vec(selector(), 0..6),
        handles in proptest::collection::vec(state_handle(), 0..12),
        records in proptest::collection::vec(state_record(), 0..6),
    ) {
        prop_assert_eq!(
            encoded_len(&Request::Snapshot { selector: Some(sel.clone()) })?,
            2 + encoded_len(&sel)?
        );
        let sum_sels: usize = sels.iter().map(|s| encoded_len(s).unwrap()).sum();
        prop_assert_eq!(
            encoded_len(&Request::Count { selectors: sels.clone() })?,
            1 + varint_len(sels.len()) + sum_sels
        );
        prop_assert_eq!(
            encoded_len(&Request::KillMatching { selectors: sels.clone(), match_opposite: true })?,
            1 + varint_len(sels.len()) + sum_sels + 1
        );
        let sum_handles: usize = handles.iter().map(|h| encoded_len(h).unwrap()).sum();
        prop_assert_eq!(
            encoded_len(&Request::KillHandles { handles: handles.clone(), match_opposite: true })?,
            1 + varint_len(handles.len()) + sum_handles + 1
        );
        let sum_records: usize = records.iter().map(|r| encoded_len(r).unwrap()).sum();
        prop_assert_eq!(
            encoded_len(&Response::SnapshotBatch(records.clone()))?,
            1 + varint_len(records.len()) + sum_records
        );
    }
}

/// The strategies really produce every variant and every selector field both set and unset;
/// otherwise the properties above would prove less than they claim.
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut verbs = BTreeSet::new();
    let mut responses = BTreeSet::new();
    let mut fields_set = BTreeSet::new();
    let mut fields_unset = BTreeSet::new();
    let mut l4s = BTreeSet::new();
    let (req_s, resp_s, sel_s, key_s) = (request(), response(), selector(), state_key());
    for _ in 0..2000 {
        verbs.insert(req_s.new_tree(&mut runner).unwrap().current().verb().name());
        responses.insert(response_variant(&resp_s.new_tree(&mut runner).unwrap().current()));
        let sel = sel_s.new_tree(&mut runner).unwrap().current();
        let set = sel.fields();
        for f in statecull_proto::SelectorField::ALL {
            if set.contains(&f) {
                fields_set.insert(f.name());
            } else {
                fields_unset.insert(f.name());
            }
        }
        l4s.insert(match key_s.new_tree(&mut runner).unwrap().current().l4 {
            L4::Ports { .. } => 0,
            L4::Icmp { .. } => 1,
            L4::None => 2,
        });
    }
    assert_eq!(verbs.len(), 7, "verbs seen: {verbs:?}");
    assert_eq!(responses.len(), 7, "responses seen: {responses:?}");
    assert_eq!(fields_set.len(), 11, "fields set: {fields_set:?}");
    assert_eq!(fields_unset.len(), 11, "fields unset: {fields_unset:?}");
    assert_eq!(l4s.len(), 3);
}

fn payload_of(frame: Vec<u8>) -> Vec<u8> {
    frame[HEADER_LEN..].to_vec()
}

/// The encoding is bincode 2 "standard" (varint, little-endian): pin a few messages byte for
/// byte so a change of encoding or configuration cannot slip through as a mere round-trip.
#[test]
fn wire_format_is_pinned() {
    let hello = Request::Hello(Hello { protocol_version: 1, client: "cli".into() });
    assert_eq!(payload_of(encode_request(&hello).unwrap()), [0, 1, 3, b'c', b'l', b'i']);
    assert_eq!(encode_request(&hello).unwrap()[..HEADER_LEN], [0, 0, 0, 6]);

    let snap = Request::Snapshot { selector: None };
    assert_eq!(payload_of(encode_request(&snap).unwrap()), [1, 0]);

    let kill = Request::KillMatching {
        selectors: vec![Selector {
            proto: Some(ipproto::TCP),
            nat_addr: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))),
            ..Selector::default()
        }],
        match_opposite: false,
    };
    #[rustfmt::skip]
    let expected = [
        4, 1,                         // KillMatching, one selector
        0, 1, 6, 0, 0, 0, 0, 0,       // family None, proto Some(6), src..mark None
        1, 0, 198, 51, 100, 1,        // nat_addr Some(V4 198.51.100.1)
        0, 0, 0,                      // gateway, interface, label None
        0,                            // match_opposite false
    ];
    assert_eq!(payload_of(encode_request(&kill).unwrap()), expected);

    let handles = Request::KillHandles {
        handles: vec![StateHandle::Conntrack {
            orig: StateKey {
                proto: ipproto::UDP,
                src: IpAddr::V6(Ipv6Addr::LOCALHOST),
                dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
                l4: L4::Ports { src: 443, dst: 53 },
            },
            id: 300,
            zone: 0,
        }],
        match_opposite: true,
    };
    let mut expected = vec![3, 1, 0, 17, 1];
    expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    expected.push(1);
    expected.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    expected.extend_from_slice(&[0, 251, 0xbb, 0x01, 53, 251, 0x2c, 0x01, 0]);
    expected.push(1); // match_opposite true
    assert_eq!(payload_of(encode_request(&handles).unwrap()), expected);

    let done = Response::SnapshotDone(SnapshotDone { records: 300, elapsed_us: u64::MAX });
    assert_eq!(
        payload_of(encode_response(&done).unwrap()),
        [2, 251, 0x2c, 0x01, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );

    let err = Response::Error(ErrorReply { code: ErrorCode::Internal, message: "x".into() });
    assert_eq!(payload_of(encode_response(&err).unwrap()), [5, 10, 1, b'x']);
}

/// One hand-written value per variant, so a failure names the variant.
#[test]
fn every_variant_roundtrips() {
    let sel = Selector {
        family: Some(AddressFamily::Ipv6),
        src: Some("2001:db8::/32".parse().unwrap()),
        interface: Some(IfName("wg0".into())),
        ..Selector::default()
    };
    let requests = [
        Request::Hello(Hello { protocol_version: 1, client: "statecull cli".into() }),
        Request::Snapshot { selector: None },
        Request::Snapshot { selector: Some(sel.clone()) },
        Request::Count { selectors: vec![] },
        Request::Count { selectors: vec![sel.clone(), Selector::default()] },
        Request::KillHandles { handles: vec![], match_opposite: false },
        Request::KillMatching { selectors: vec![sel], match_opposite: true },
        Request::Flush { interface: None },
        Request::Flush { interface: Some(IfName("eth0".into())) },
    ];
    let verbs: BTreeSet<&str> = requests.iter().map(|r| r.verb().name()).collect();
    assert_eq!(verbs.len(), 6);
    for req in &requests {
        request_roundtrip(req).unwrap_or_else(|e| panic!("{req:?}: {e}"));
    }
    let responses = [
        Response::SnapshotBatch(vec![]),
        Response::SnapshotDone(SnapshotDone { records: 0, elapsed_us: 0 }),
        Response::Count(CountReply {
            per_selector: vec![1, 2, u64::MAX],
            matching_any: 3,
            table_entries: 4,
            elapsed_us: 5,
        }),
        Response::Killed(KillReport {
            requested: 1,
            killed: 1,
            not_found: 0,
            spared: 0,
            failed: 0,
            first_error: Some("EPERM".into()),
            exact: true,
            path: KillPath::Handles,
            table_passes: 0,
            elapsed_us: 9,
            note: None,
            per_selector: vec![1, 0],
        }),
        Response::Error(ErrorReply { code: ErrorCode::Busy, message: String::new() }),
    ];
    for resp in &responses {
        response_roundtrip(resp).unwrap_or_else(|e| panic!("{resp:?}: {e}"));
    }
}
