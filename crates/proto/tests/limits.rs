//! The per-request ceilings fit one frame even with the largest possible values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use statecull_proto::frame::{
    decode_request, decode_response, encode_request, encode_response, encoded_len,
};
use statecull_proto::{
    Capabilities, Counters, ErrorCode, HEADER_LEN, IfName, L4, Label, Limits, MAX_FRAME_LEN,
    MAX_HANDLES, MAX_SELECTORS, MAX_SNAPSHOT_BATCH, MarkMatch, PortRange, Prefix, ProtoError,
    Request, Response, Selector, StateDetail, StateHandle, StateKey, StateRecord, ipproto,
};

const FRAME: usize = MAX_FRAME_LEN as usize;
const V6_MAX: IpAddr =
    IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xfffe));

fn key(src: IpAddr, dst: IpAddr, l4: L4) -> StateKey {
    StateKey { proto: u8::MAX, src, dst, l4 }
}

/// The largest-encoding layer-4 identity: two ports at the u16 maximum (3 varint bytes each).
const PORTS_MAX: L4 = L4::Ports { src: u16::MAX, dst: u16::MAX };

fn worst_key() -> StateKey {
    StateKey { proto: ipproto::TCP, ..key(V6_MAX, V6_MAX, PORTS_MAX) }
}

fn worst_handle() -> StateHandle {
    StateHandle::Conntrack { orig: worst_key(), id: u32::MAX, zone: u16::MAX }
}

fn worst_record() -> StateRecord {
    StateRecord {
        handle: worst_handle(),
        key: worst_key(),
        detail: StateDetail::Conntrack {
            reply: worst_key(),
            mark: u32::MAX,
            zone: u16::MAX,
            status: u32::MAX,
            tcp_state: Some(u8::MAX),
        },
        expires_in_secs: Some(u32::MAX),
        counters: Some(Counters {
            orig_packets: u64::MAX,
            orig_bytes: u64::MAX,
            reply_packets: u64::MAX,
            reply_bytes: u64::MAX,
        }),
    }
}

/// The largest pf record: interface names at their 15-byte limit (the pf backend refuses
/// longer ones), IPv6 keys and gateway, every optional field set.
fn worst_pf_record() -> StateRecord {
    let name = "i".repeat(statecull_proto::model::MAX_IFNAME_LEN);
    StateRecord {
        handle: StateHandle::Pf { id: u64::MAX, creator_id: u32::MAX },
        key: worst_key(),
        detail: StateDetail::Pf {
            direction: statecull_proto::PfDirection::Out,
            interface: name.clone(),
            orig_interface: name,
            wire: worst_key(),
            stack: worst_key(),
            gateway: Some(V6_MAX),
            rule: Some(u32::MAX),
        },
        expires_in_secs: Some(u32::MAX),
        counters: Some(Counters {
            orig_packets: u64::MAX,
            orig_bytes: u64::MAX,
            reply_packets: u64::MAX,
            reply_bytes: u64::MAX,
        }),
    }
}

/// The handle and record above really are the largest: no other layer-4 identity, address
/// family or value makes one longer.
#[test]
fn worst_cases_are_the_largest() {
    let v4 = IpAddr::V4(Ipv4Addr::BROADCAST);
    let l4s = [PORTS_MAX, L4::Icmp { id: u16::MAX, kind: u8::MAX, code: u8::MAX }, L4::None];
    let worst_h = encoded_len(&worst_handle()).unwrap();
    let worst_r = encoded_len(&worst_record()).unwrap();
    for l4 in l4s {
        for (src, dst) in [(V6_MAX, V6_MAX), (v4, v4), (v4, V6_MAX)] {
            let k = key(src, dst, l4);
            let h = StateHandle::Conntrack { orig: k, id: u32::MAX, zone: u16::MAX };
            assert!(encoded_len(&h).unwrap() <= worst_h, "{h:?}");
            let mut r = worst_record();
            r.handle = h;
            r.key = k;
            r.detail = StateDetail::Conntrack {
                reply: k,
                mark: u32::MAX,
                zone: u16::MAX,
                status: u32::MAX,
                tcp_state: Some(u8::MAX),
            };
            assert!(encoded_len(&r).unwrap() <= worst_r, "{r:?}");
        }
    }
    // Exact sizes, so a change in the model shows up here first.
    assert_eq!(worst_h, 51, "variant 1 + proto 1 + 2*17 addresses + ports 7 + id 5 + zone 3");
    assert_eq!(worst_r, 194);
}

#[test]
fn max_kill_handles_fits_one_frame() {
    let n = usize::try_from(MAX_HANDLES).unwrap();
    let req = Request::KillHandles { handles: vec![worst_handle(); n], match_opposite: true };
    assert!(
        req.clone().check(&Limits::PROTOCOL, &Capabilities::any()).is_ok(),
        "the worst-case handles are valid"
    );
    let len = encoded_len(&req).unwrap();
    let per = encoded_len(&worst_handle()).unwrap();
    eprintln!(
        "KillHandles x {n}: {len} bytes ({per} per handle) of {FRAME}: {:.1}% used, \
         {} bytes spare, room for {} handles",
        100.0 * len as f64 / FRAME as f64,
        FRAME - len,
        (FRAME - 4) / per
    );
    assert!(len <= FRAME);
    let frame = encode_request(&req).unwrap();
    assert_eq!(frame.len(), HEADER_LEN + len);
    assert_eq!(decode_request(&frame[HEADER_LEN..]).unwrap(), req);

    let over = Request::KillHandles { handles: vec![worst_handle(); n + 1], match_opposite: true };
    let e = over.check(&Limits::PROTOCOL, &Capabilities::any()).unwrap_err();
    assert_eq!(e, ProtoError::TooMany { what: "handles", count: n + 1, max: n });
    assert_eq!(e.code(), ErrorCode::TooLarge);
}

#[test]
fn max_snapshot_batch_fits_one_frame() {
    let n = usize::try_from(MAX_SNAPSHOT_BATCH).unwrap();
    // pf records (two keys, interface names) are the larger kind.
    let worst = worst_pf_record();
    assert!(encoded_len(&worst).unwrap() > encoded_len(&worst_record()).unwrap());
    let resp = Response::SnapshotBatch(vec![worst.clone(); n]);
    let len = encoded_len(&resp).unwrap();
    let per = encoded_len(&worst).unwrap();
    eprintln!(
        "SnapshotBatch x {n}: {len} bytes ({per} per record) of {FRAME}: {:.1}% used, \
         {} bytes spare, room for {} records",
        100.0 * len as f64 / FRAME as f64,
        FRAME - len,
        (FRAME - 4) / per
    );
    assert!(len <= FRAME);
    let frame = encode_response(&resp).unwrap();
    assert_eq!(frame.len(), HEADER_LEN + len);
    assert_eq!(decode_response(&frame[HEADER_LEN..]).unwrap(), resp);
}

/// Not a stated ceiling of the brief, but the same argument for selectors: MAX_SELECTORS of
/// the largest selectors (every field set, IPv6, longest names) also fit.
#[test]
fn max_selectors_fit_one_frame() {
    let sel = Selector {
        family: Some(statecull_proto::AddressFamily::Ipv6),
        proto: Some(ipproto::TCP),
        src: Some(Prefix { addr: V6_MAX, len: 128 }),
        dst: Some(Prefix { addr: V6_MAX, len: 128 }),
        src_port: Some(PortRange { first: u16::MAX, last: u16::MAX }),
        dst_port: Some(PortRange { first: u16::MAX, last: u16::MAX }),
        mark: Some(MarkMatch { value: u32::MAX, mask: u32::MAX }),
        // Every IPv6 address encodes to 17 bytes; these two must be unicast to pass the check.
        nat_addr: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        gateway: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2))),
        interface: Some(IfName("x".repeat(statecull_proto::model::MAX_IFNAME_LEN))),
        label: Some(Label("y".repeat(statecull_proto::model::MAX_LABEL_LEN))),
    };
    let n = usize::try_from(MAX_SELECTORS).unwrap();
    let req = Request::KillMatching { selectors: vec![sel; n], match_opposite: true };
    assert_eq!(
        req.clone().check(&Limits::PROTOCOL, &Capabilities::any()).unwrap().selectors().len(),
        n
    );
    let len = encoded_len(&req).unwrap();
    eprintln!("KillMatching x {n} selectors: {len} bytes of {FRAME}");
    assert!(len <= FRAME);
}

/// The encoder refuses a message that does not fit a frame instead of sending it.
#[test]
fn oversized_message_is_refused_by_the_encoder() {
    let per = encoded_len(&worst_handle()).unwrap();
    let n = FRAME / per + 1;
    let req = Request::KillHandles { handles: vec![worst_handle(); n], match_opposite: true };
    assert!(encoded_len(&req).unwrap() > FRAME);
    let e = encode_request(&req).unwrap_err();
    assert!(matches!(e, ProtoError::Encode(_)), "{e:?}");
    assert_eq!(e.code(), ErrorCode::Internal);
}

#[test]
fn protocol_limits_are_the_constants() {
    assert_eq!(
        Limits::PROTOCOL,
        Limits {
            max_frame_len: MAX_FRAME_LEN,
            max_selectors: MAX_SELECTORS,
            max_handles: MAX_HANDLES,
            max_snapshot_batch: MAX_SNAPSHOT_BATCH,
        }
    );
    assert_eq!(Limits::default(), Limits::PROTOCOL);
}
