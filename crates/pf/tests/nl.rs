//! The pf generic-netlink codec (`statecull_pf::nl`) against byte layouts written out here.
//!
//! * every wire constant below is spelled out from `sys/netpfil/pf/pf_nl.h` and the genl
//!   headers, never taken from `nl::`, and expected messages are assembled by the small
//!   encoder in this file, so a wrong constant, width or byte order in the codec fails here
//!   instead of agreeing with itself;
//! * golden layouts: the family request, a kill by gateway (rt_addr /32 + kill_match), a kill
//!   by id, a kill with every attribute;
//! * proptest: kill requests and dumped states round-trip, hostile or corrupted bytes never
//!   panic any parser, and whatever parses re-encodes to the same value;
//! * truncated and mis-sized attributes are refused.
// clippy.toml allows these inside #[test] functions only; the shared helpers below assert too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::sample::Index;
use statecull_netlink::{Attrs, MsgBuilder, NlMsg, NlMsgs};
use statecull_pf::nl::{
    NlCodecError, StateFilter, family_reply, family_request, getstates_request, kill_reply,
    kill_request, parse_family_reply, parse_getstates_request, parse_kill_reply,
    parse_kill_request, parse_state, state_message,
};
use statecull_pf::types::{Direction, PfKey, PfKill, PfState, RuleAddr};

// ---------------------------------------------------------------------------------------------
// Wire constants (deliberately not `nl::*`).

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_VERSION: u16 = 3;
const CTRL_ATTR_OPS: u16 = 6;

const PFNL_CMD_GETSTATES: u8 = 1;
const PFNL_CMD_GETCREATORS: u8 = 2;
const PFNL_CMD_CLRSTATES: u8 = 8;
const PFNL_CMD_KILLSTATES: u8 = 9;

const PF_STK_ADDR0: u16 = 1;
const PF_STK_ADDR1: u16 = 2;
const PF_STK_PORT0: u16 = 3;
const PF_STK_PORT1: u16 = 4;
const PF_STK_AF: u16 = 5;

const PF_ST_ID: u16 = 1;
const PF_ST_CREATORID: u16 = 2;
const PF_ST_IFNAME: u16 = 3;
const PF_ST_ORIG_IFNAME: u16 = 4;
const PF_ST_KEY_WIRE: u16 = 5;
const PF_ST_KEY_STACK: u16 = 6;
const PF_ST_RT_ADDR: u16 = 9;
const PF_ST_RULE: u16 = 10;
const PF_ST_CREATION: u16 = 13;
const PF_ST_PACKETS0: u16 = 15;
const PF_ST_AF: u16 = 19;
const PF_ST_PROTO: u16 = 21;
const PF_ST_DIRECTION: u16 = 22;
const PF_ST_VERSION: u16 = 28;
const PF_ST_FILTER_ADDR: u16 = 29;
const PF_ST_FILTER_MASK: u16 = 30;

const PF_AT_ADDR: u16 = 1;
const PF_AT_MASK: u16 = 2;
const PF_AT_TABLENAME: u16 = 4;
const PF_AT_TYPE: u16 = 5;

const PF_RAT_ADDR: u16 = 1;
const PF_RAT_SRC_PORT: u16 = 2;
const PF_RAT_DST_PORT: u16 = 3;
const PF_RAT_NEG: u16 = 4;
const PF_RAT_OP: u16 = 5;

const PF_CS_CMP_ID: u16 = 1;
const PF_CS_CMP_CREATORID: u16 = 2;
const PF_CS_CMP_DIR: u16 = 3;
const PF_CS_AF: u16 = 4;
const PF_CS_PROTO: u16 = 5;
const PF_CS_SRC: u16 = 6;
const PF_CS_DST: u16 = 7;
const PF_CS_RT_ADDR: u16 = 8;
const PF_CS_IFNAME: u16 = 9;
const PF_CS_LABEL: u16 = 10;
const PF_CS_KILL_MATCH: u16 = 11;
const PF_CS_NAT: u16 = 12;
const PF_CS_KILLED: u16 = 13;

/// FreeBSD's address families.
const AF_INET: u8 = 2;
const AF_INET6: u8 = 28;
const PF_OP_EQ: u8 = 2;

/// Any family id the controller might hand out.
const FAMILY: u16 = 0x1a;

// ---------------------------------------------------------------------------------------------
// An independent little encoder.

fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + payload.len()).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | NLA_F_NESTED, &parts.concat())
}

fn msg(msg_type: u16, flags: u16, seq: u32, cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body = attrs.concat();
    let len = u32::try_from(16 + 4 + body.len()).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&msg_type.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes()); // pid
    v.extend_from_slice(&[cmd, 0, 0, 0]); // genlmsghdr
    v.extend_from_slice(&body);
    v
}

/// A genl request to the pf family.
fn pf(cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    msg(FAMILY, NLM_F_REQUEST | NLM_F_ACK, 1, cmd, attrs)
}

fn one(bytes: &[u8]) -> NlMsg<'_> {
    let mut it = NlMsgs::new(bytes);
    let m = it.next().expect("one message").expect("well framed");
    assert!(it.next().is_none(), "exactly one message");
    m
}

fn built(f: impl FnOnce(&mut MsgBuilder)) -> Vec<u8> {
    let mut b = MsgBuilder::new();
    f(&mut b);
    b.as_bytes().to_vec()
}

/// The top-level attributes of one genl message: (type without flags, payload).
fn attrs_of(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let m = one(bytes);
    let (_, attrs) = m.genl_attrs().unwrap();
    attrs.map(|a| a.map(|(k, v)| (k, v.to_vec()))).collect::<Result<_, _>>().unwrap()
}

fn nested(v: &[u8]) -> Vec<(u16, Vec<u8>)> {
    Attrs::new(v).map(|a| a.map(|(k, v)| (k, v.to_vec()))).collect::<Result<_, _>>().unwrap()
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

fn addr16(a: &IpAddr) -> Vec<u8> {
    let mut out = vec![0u8; 16];
    match a {
        IpAddr::V4(x) => out[..4].copy_from_slice(&x.octets()),
        IpAddr::V6(x) => out.copy_from_slice(&x.octets()),
    }
    out
}

fn zero_rule_addr_parts(
    addr: &[u8],
    mask: &[u8],
    ports: [u16; 2],
    neg: u8,
    op: u8,
) -> Vec<Vec<u8>> {
    vec![
        nest(PF_RAT_ADDR, &[nla(PF_AT_ADDR, addr), nla(PF_AT_MASK, mask), nla(PF_AT_TYPE, &[0])]),
        nla(PF_RAT_SRC_PORT, &ports[0].to_be_bytes()),
        nla(PF_RAT_DST_PORT, &ports[1].to_be_bytes()),
        nla(PF_RAT_NEG, &[neg]),
        nla(PF_RAT_OP, &[op]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Golden layouts.

#[test]
fn golden_family_request() {
    let got = built(|b| family_request(b, 42));
    let expect = msg(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        42,
        CTRL_CMD_GETFAMILY,
        &[nla(CTRL_ATTR_FAMILY_NAME, b"pfctl\0")],
    );
    assert_eq!(got, expect);
    assert_eq!(got.len(), 32, "16 nlmsghdr + 4 genlmsghdr + 12 (10-byte attribute, padded)");
    assert_eq!(&got[20..32], &[10, 0, 2, 0, b'p', b'f', b'c', b't', b'l', 0, 0, 0][..]);
}

#[test]
fn family_reply_is_parsed_and_other_messages_are_not_it() {
    let reply = built(|b| family_reply(b, 42, 0x1b));
    let m = one(&reply);
    assert_eq!((m.msg_type, m.seq), (GENL_ID_CTRL, 42));
    assert_eq!(m.payload[0], CTRL_CMD_NEWFAMILY);
    assert_eq!(parse_family_reply(&m), Ok(Some(0x1b)));

    // A fuller reply, as the kernel writes it (version, nested ops), with the name first.
    let full = msg(
        GENL_ID_CTRL,
        0,
        42,
        CTRL_CMD_NEWFAMILY,
        &[
            nla(CTRL_ATTR_FAMILY_NAME, b"pfctl\0"),
            nla(CTRL_ATTR_FAMILY_ID, &0x21u16.to_ne_bytes()),
            nla(CTRL_ATTR_VERSION, &1u32.to_ne_bytes()),
            nest(CTRL_ATTR_OPS, &[nest(1, &[nla(1, &9u32.to_ne_bytes())])]),
        ],
    );
    assert_eq!(parse_family_reply(&one(&full)), Ok(Some(0x21)));

    // Not a pfctl reply: another family's, the request itself, an ACK, a DONE.
    let other = msg(
        GENL_ID_CTRL,
        0,
        42,
        CTRL_CMD_NEWFAMILY,
        &[
            nla(CTRL_ATTR_FAMILY_ID, &0x1cu16.to_ne_bytes()),
            nla(CTRL_ATTR_FAMILY_NAME, b"nlctrl\0"),
        ],
    );
    assert_eq!(parse_family_reply(&one(&other)), Ok(None));
    let prefix = msg(
        GENL_ID_CTRL,
        0,
        42,
        CTRL_CMD_NEWFAMILY,
        &[
            nla(CTRL_ATTR_FAMILY_ID, &0x1cu16.to_ne_bytes()),
            nla(CTRL_ATTR_FAMILY_NAME, b"pfctlx\0"),
        ],
    );
    assert_eq!(parse_family_reply(&one(&prefix)), Ok(None));
    assert_eq!(parse_family_reply(&one(&built(|b| family_request(b, 1)))), Ok(None));
    let ack = NlMsg { msg_type: NLMSG_ERROR, flags: 0, seq: 42, payload: &[0u8; 20] };
    assert_eq!(parse_family_reply(&ack), Ok(None));
    let done = NlMsg { msg_type: NLMSG_DONE, flags: 0, seq: 42, payload: &[0u8; 4] };
    assert_eq!(parse_family_reply(&done), Ok(None));
}

#[test]
fn golden_kill_by_gateway_with_kill_match() {
    let k = PfKill {
        rt_addr: RuleAddr::prefix(&v4("192.0.2.1"), 32),
        kill_match: true,
        ..PfKill::default()
    };
    let got = built(|b| kill_request(b, FAMILY, 7, PFNL_CMD_KILLSTATES, &k));
    let mut addr = vec![192, 0, 2, 1];
    addr.resize(16, 0);
    let mut mask = vec![255; 4];
    mask.resize(16, 0);
    let expect = msg(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        7,
        PFNL_CMD_KILLSTATES,
        &[
            nest(PF_CS_RT_ADDR, &zero_rule_addr_parts(&addr, &mask, [0, 0], 0, 0)),
            nla(PF_CS_KILL_MATCH, &[1]),
        ],
    );
    assert_eq!(got, expect);
    // Spelled out: 16 + 4 + 88 (rt_addr nest) + 8 (kill_match).
    assert_eq!(got.len(), 116);
    assert_eq!(&got[..4], &116u32.to_ne_bytes());
    assert_eq!(&got[4..6], &FAMILY.to_ne_bytes(), "nlmsg_type is the family id");
    assert_eq!(&got[16..20], &[PFNL_CMD_KILLSTATES, 0, 0, 0], "genlmsghdr");
    assert_eq!(&got[20..24], &[&88u16.to_ne_bytes()[..], &0x8008u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[24..28], &[&52u16.to_ne_bytes()[..], &0x8001u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[28..32], &[&20u16.to_ne_bytes()[..], &1u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[32..36], &[192, 0, 2, 1], "PF_AT_ADDR: in6_addr bytes, v4 first");
    assert_eq!(&got[48..52], &[&20u16.to_ne_bytes()[..], &2u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[52..56], &[255, 255, 255, 255], "PF_AT_MASK /32");
    assert_eq!(
        &got[68..73],
        &[&5u16.to_ne_bytes()[..], &5u16.to_ne_bytes()[..], &[0][..]].concat()
    );
    assert_eq!(
        &got[108..113],
        &[&5u16.to_ne_bytes()[..], &11u16.to_ne_bytes()[..], &[1][..]].concat()
    );

    let (cmd, back) = parse_kill_request(&one(&got)).unwrap();
    assert_eq!((cmd, back), (PFNL_CMD_KILLSTATES, k));
}

#[test]
fn golden_kill_by_id() {
    let id = 0x0102_0304_0506_0708u64;
    let creatorid = 0xdead_beefu32;
    let got =
        built(|b| kill_request(b, FAMILY, 9, PFNL_CMD_KILLSTATES, &PfKill::by_id(id, creatorid)));
    let expect = msg(
        FAMILY,
        NLM_F_REQUEST | NLM_F_ACK,
        9,
        PFNL_CMD_KILLSTATES,
        &[nla(PF_CS_CMP_ID, &id.to_ne_bytes()), nla(PF_CS_CMP_CREATORID, &creatorid.to_ne_bytes())],
    );
    assert_eq!(got, expect);
    assert_eq!(got.len(), 16 + 4 + 12 + 8);
    assert_eq!(&got[20..24], &[&12u16.to_ne_bytes()[..], &1u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[24..32], &id.to_ne_bytes(), "raw id, host order, never swapped");
    assert_eq!(&got[32..36], &[&8u16.to_ne_bytes()[..], &2u16.to_ne_bytes()[..]].concat());
    assert_eq!(&got[36..40], &creatorid.to_ne_bytes(), "raw creator id, host order");
    #[cfg(target_endian = "little")]
    assert_eq!(
        &got[20..40],
        &[12, 0, 1, 0, 8, 7, 6, 5, 4, 3, 2, 1, 8, 0, 2, 0, 0xef, 0xbe, 0xad, 0xde]
    );
}

#[test]
fn golden_kill_with_every_attribute() {
    let k = PfKill {
        id: 5,
        creatorid: 6,
        direction: 2,
        af: AF_INET,
        proto: 6,
        src: RuleAddr::prefix(&v4("198.51.100.77"), 24),
        dst: RuleAddr { port: [443, 0], port_op: PF_OP_EQ, ..RuleAddr::default() },
        rt_addr: RuleAddr { neg: true, ..RuleAddr::prefix(&v4("192.0.2.254"), 32) },
        ifname: "em0".into(),
        label: "web".into(),
        kill_match: true,
        nat: true,
    };
    let got = built(|b| kill_request(b, FAMILY, 3, PFNL_CMD_CLRSTATES, &k));
    let m = one(&got);
    assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
    let a = attrs_of(&got);
    let shape: Vec<(u16, usize)> = a.iter().map(|(t, v)| (*t, v.len())).collect();
    assert_eq!(
        shape,
        [
            (PF_CS_CMP_ID, 8),
            (PF_CS_CMP_CREATORID, 4),
            (PF_CS_CMP_DIR, 1),
            (PF_CS_AF, 1),
            (PF_CS_PROTO, 1),
            (PF_CS_SRC, 84),
            (PF_CS_DST, 84),
            (PF_CS_RT_ADDR, 84),
            (PF_CS_IFNAME, 4),
            (PF_CS_LABEL, 4),
            (PF_CS_KILL_MATCH, 1),
            (PF_CS_NAT, 1),
        ]
    );
    assert_eq!(a[0].1, 5u64.to_ne_bytes());
    assert_eq!(a[1].1, 6u32.to_ne_bytes());
    assert_eq!((a[2].1[0], a[3].1[0], a[4].1[0]), (2, AF_INET, 6));
    assert_eq!(a[8].1, b"em0\0");
    assert_eq!(a[9].1, b"web\0");
    assert_eq!((a[10].1[0], a[11].1[0]), (1, 1));

    // The nests are flagged NLA_F_NESTED on the wire.
    let src_hdr = &got[20 + 12 + 8 + 8 + 8 + 8..][..4];
    assert_eq!(&src_hdr[2..4], &(PF_CS_SRC | NLA_F_NESTED).to_ne_bytes());

    let src = nested(&a[5].1);
    let shape: Vec<(u16, usize)> = src.iter().map(|(t, v)| (*t, v.len())).collect();
    assert_eq!(
        shape,
        [
            (PF_RAT_ADDR, 48),
            (PF_RAT_SRC_PORT, 2),
            (PF_RAT_DST_PORT, 2),
            (PF_RAT_NEG, 1),
            (PF_RAT_OP, 1)
        ]
    );
    let wrap = nested(&src[0].1);
    assert_eq!(wrap[0], (PF_AT_ADDR, [&[198, 51, 100, 0][..], &[0; 12]].concat()), "masked");
    assert_eq!(wrap[1], (PF_AT_MASK, [&[255, 255, 255, 0][..], &[0; 12]].concat()));
    assert_eq!(wrap[2], (PF_AT_TYPE, vec![0]), "PF_ADDR_ADDRMASK");

    let dst = nested(&a[6].1);
    assert_eq!(dst[1], (PF_RAT_SRC_PORT, vec![0x01, 0xbb]), "port[0] = 443, big-endian bytes");
    assert_eq!(dst[2], (PF_RAT_DST_PORT, vec![0, 0]));
    assert_eq!(dst[4], (PF_RAT_OP, vec![PF_OP_EQ]));
    let rt = nested(&a[7].1);
    assert_eq!(rt[3], (PF_RAT_NEG, vec![1]));

    assert_eq!(parse_kill_request(&m), Ok((PFNL_CMD_CLRSTATES, k)));
}

#[test]
fn empty_kill_is_sent_as_is_and_means_everything_to_the_kernel() {
    let got = built(|b| kill_request(b, FAMILY, 1, PFNL_CMD_CLRSTATES, &PfKill::default()));
    assert_eq!(got, pf(PFNL_CMD_CLRSTATES, &[]));
    let (_, k) = parse_kill_request(&one(&got)).unwrap();
    assert!(k.is_everything());
}

#[test]
fn kill_reply_round_trip_and_what_is_not_a_reply() {
    for cmd in [PFNL_CMD_KILLSTATES, PFNL_CMD_CLRSTATES] {
        let got = built(|b| kill_reply(b, FAMILY, 77, cmd, 123_456));
        assert_eq!(got, msg(FAMILY, 0, 77, cmd, &[nla(PF_CS_KILLED, &123_456u32.to_ne_bytes())]));
        assert_eq!(parse_kill_reply(&one(&got)), Ok(Some(123_456)));
    }
    let ack = NlMsg { msg_type: NLMSG_ERROR, flags: 0, seq: 77, payload: &[0u8; 20] };
    assert_eq!(parse_kill_reply(&ack), Ok(None));
    let no_count = msg(FAMILY, 0, 77, PFNL_CMD_KILLSTATES, &[]);
    assert_eq!(parse_kill_reply(&one(&no_count)), Ok(None));
    let other_cmd =
        msg(FAMILY, 0, 77, PFNL_CMD_GETCREATORS, &[nla(PF_CS_KILLED, &1u32.to_ne_bytes())]);
    assert_eq!(parse_kill_reply(&one(&other_cmd)), Ok(None));
}

// ---------------------------------------------------------------------------------------------
// GETSTATES requests.

#[test]
fn getstates_request_layout_and_round_trip() {
    let f = StateFilter {
        ifname: Some("vtnet0".into()),
        af: AF_INET,
        proto: 17,
        addr: Some((v4("203.0.113.9"), 24)),
    };
    let got = built(|b| getstates_request(b, FAMILY, 5, &f));
    let m = one(&got);
    assert_eq!((m.msg_type, m.flags, m.payload[0]), (FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1));
    let mut mask = vec![255, 255, 255, 0];
    mask.resize(16, 0);
    assert_eq!(
        got,
        msg(
            FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            5,
            PFNL_CMD_GETSTATES,
            &[
                nla(PF_ST_IFNAME, b"vtnet0\0"),
                nla(PF_ST_AF, &[AF_INET]),
                nla(PF_ST_PROTO, &17u16.to_ne_bytes()),
                nla(PF_ST_FILTER_ADDR, &addr16(&v4("203.0.113.9"))),
                nla(PF_ST_FILTER_MASK, &mask),
            ]
        )
    );
    assert_eq!(parse_getstates_request(&m), Ok(f));

    // No filter: no attributes at all.
    let all = built(|b| getstates_request(b, FAMILY, 5, &StateFilter::default()));
    assert_eq!(all, msg(FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 5, PFNL_CMD_GETSTATES, &[]));
    assert_eq!(parse_getstates_request(&one(&all)), Ok(StateFilter::default()));

    // An address implies its family, and a family is always followed by a u16 protocol.
    let f6 = StateFilter { addr: Some((v6("2001:db8::"), 32)), ..StateFilter::default() };
    let got = built(|b| getstates_request(b, FAMILY, 5, &f6));
    let a = attrs_of(&got);
    assert_eq!(a[0], (PF_ST_AF, vec![AF_INET6]));
    assert_eq!(a[1], (PF_ST_PROTO, 0u16.to_ne_bytes().to_vec()));
    assert_eq!(parse_getstates_request(&one(&got)), Ok(StateFilter { af: AF_INET6, ..f6.clone() }));
}

fn state(af: u8) -> PfState {
    let (a, b, nat, gw) = if af == AF_INET {
        (v4("10.0.0.5"), v4("198.51.100.7"), v4("203.0.113.1"), v4("203.0.113.254"))
    } else {
        (v6("fd00::5"), v6("2001:db8::7"), v6("2001:db8:1::1"), v6("2001:db8:1::fe"))
    };
    let stack = PfKey { af, proto: 6, addr: [b, a], port: [443, 40000] };
    PfState {
        id: 0x1122_3344_5566_7788,
        creatorid: 0x0a0b_0c0d,
        direction: Direction::Out,
        ifname: "wan0".into(),
        orig_ifname: "wan0".into(),
        wire: PfKey { addr: [b, nat], port: [443, 50000], ..stack },
        stack,
        rt_addr: Some(gw),
        rule: 3,
        packets: [10, 20],
        bytes: [1000, 2000],
        creation: 60,
        expire: 30,
    }
}

#[test]
fn state_filter_matches_like_the_kernel() {
    let s = state(AF_INET);
    let any = StateFilter::default();
    assert!(any.matches(&s));
    // Any of the four key addresses: wire dst, wire NAT source, stack source.
    for (a, len) in [("198.51.100.0", 24), ("203.0.113.1", 32), ("10.0.0.0", 8)] {
        let f = StateFilter { addr: Some((v4(a), len)), ..any.clone() };
        assert!(f.matches(&s), "{a}/{len}");
    }
    assert!(!StateFilter { addr: Some((v4("192.0.2.0"), 24)), ..any.clone() }.matches(&s));
    assert!(StateFilter { addr: Some((v4("192.0.2.0"), 0)), ..any.clone() }.matches(&s));
    // The gateway is not a key address.
    assert!(!StateFilter { addr: Some((v4("203.0.113.254"), 32)), ..any.clone() }.matches(&s));
    assert!(StateFilter { proto: 6, ..any.clone() }.matches(&s));
    assert!(!StateFilter { proto: 17, ..any.clone() }.matches(&s));
    assert!(!StateFilter { af: AF_INET6, ..any.clone() }.matches(&s));
    // The interface is the state's, not the original one of a floating state.
    let floating = PfState { ifname: "all".into(), ..s.clone() };
    let wan = StateFilter { ifname: Some("wan0".into()), ..any.clone() };
    assert!(wan.matches(&s) && !wan.matches(&floating));
    assert!(StateFilter { ifname: Some(String::new()), ..any.clone() }.matches(&floating));
    // An IPv4 prefix never picks IPv6 states whose first bytes agree (the family is implied).
    let s6 = PfState {
        wire: PfKey { addr: [v6("cb00:7101::"), v6("2001:db8::1")], ..state(AF_INET6).wire },
        ..state(AF_INET6)
    };
    let f = StateFilter { addr: Some((v4("203.0.113.1"), 16)), ..any.clone() };
    assert!(!f.matches(&s6));
    assert!(StateFilter { addr: Some((v6("cb00:7101::"), 32)), ..any }.matches(&s6));
}

// ---------------------------------------------------------------------------------------------
// Dumped states.

#[test]
fn state_message_layout_and_creatorid_swap() {
    for af in [AF_INET, AF_INET6] {
        let s = state(af);
        let got = built(|b| state_message(b, FAMILY, 11, &s));
        let m = one(&got);
        assert_eq!((m.msg_type, m.flags, m.seq, m.payload[0]), (FAMILY, NLM_F_MULTI, 11, 1));
        let a = attrs_of(&got);
        let find = |t: u16| a.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(find(PF_ST_ID), s.id.to_ne_bytes(), "raw id, host order");
        let cid = find(PF_ST_CREATORID);
        assert_eq!(cid, s.creatorid.to_be_bytes(), "htonl(raw) written as a host-order u32");
        assert_eq!(u32::from_ne_bytes(cid[..].try_into().unwrap()), s.creatorid.to_be());
        #[cfg(target_endian = "little")]
        assert_eq!(
            u32::from_ne_bytes(cid[..].try_into().unwrap()),
            0x0d0c_0b0a,
            "swapped on amd64"
        );
        assert_eq!(find(PF_ST_AF), [af]);
        assert_eq!(find(PF_ST_PROTO), [6], "u8 in dumps");
        assert_eq!(find(PF_ST_DIRECTION), [2], "PF_OUT");
        assert_eq!(find(PF_ST_IFNAME), b"wan0\0");
        assert_eq!(find(PF_ST_RT_ADDR).len(), if af == AF_INET { 4 } else { 16 });
        assert_eq!(find(PF_ST_VERSION), 20_230_404u64.to_ne_bytes());
        assert_eq!(find(PF_ST_CREATION), s.creation.to_ne_bytes(), "u32, host order");
        assert_eq!(find(PF_ST_PACKETS0), s.packets[0].to_ne_bytes(), "u64, host order");
        assert_eq!(find(PF_ST_RULE), s.rule.to_ne_bytes());
        let key = nested(&find(PF_ST_KEY_WIRE));
        let kf = |t: u16| key.iter().find(|(k, _)| *k == t).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(kf(PF_STK_ADDR0).len(), if af == AF_INET { 4 } else { 16 });
        assert_eq!(kf(PF_STK_PORT0), [0x01, 0xbb], "443, big-endian bytes");
        assert_eq!(kf(PF_STK_PORT1), 50000u16.to_be_bytes());
        assert_eq!(kf(PF_STK_AF), [af]);
        assert_eq!(parse_state(&m), Ok(s));
    }
}

/// A minimal dump message in the older kernels' shape: no per-key AF/PROTO, RT_ADDR always
/// present (all-zero when the state has no route).
fn old_style_state(skip: u16, replace: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let key = nest(
        PF_ST_KEY_WIRE,
        &[
            nla(PF_STK_ADDR0, &[198, 51, 100, 7]),
            nla(PF_STK_ADDR1, &[10, 0, 0, 5]),
            nla(PF_STK_PORT0, &53u16.to_be_bytes()),
            nla(PF_STK_PORT1, &5353u16.to_be_bytes()),
        ],
    );
    let mut stack = key.clone();
    stack[2..4].copy_from_slice(&(PF_ST_KEY_STACK | NLA_F_NESTED).to_ne_bytes());
    let mut attrs: Vec<(u16, Vec<u8>)> = vec![
        (PF_ST_KEY_WIRE, key),
        (PF_ST_KEY_STACK, stack),
        (PF_ST_PROTO, nla(PF_ST_PROTO, &[17])),
        (PF_ST_AF, nla(PF_ST_AF, &[AF_INET])),
        (PF_ST_IFNAME, nla(PF_ST_IFNAME, b"em0\0")),
        (PF_ST_ORIG_IFNAME, nla(PF_ST_ORIG_IFNAME, b"em0\0")),
        (PF_ST_RT_ADDR, nla(PF_ST_RT_ADDR, &[0, 0, 0, 0])),
        (PF_ST_DIRECTION, nla(PF_ST_DIRECTION, &[1])),
        (PF_ST_ID, nla(PF_ST_ID, &7u64.to_ne_bytes())),
        (PF_ST_CREATORID, nla(PF_ST_CREATORID, &0x0102_0304u32.to_be_bytes())),
        (PF_ST_RULE, nla(PF_ST_RULE, &u32::MAX.to_ne_bytes())),
    ];
    attrs.retain(|(t, _)| *t != skip);
    for (t, v) in replace {
        for a in attrs.iter_mut().filter(|(k, _)| k == t) {
            a.1 = v.clone();
        }
    }
    let parts: Vec<Vec<u8>> = attrs.into_iter().map(|(_, v)| v).collect();
    msg(FAMILY, NLM_F_MULTI, 1, PFNL_CMD_GETSTATES, &parts)
}

#[test]
fn older_dump_shape_parses() {
    let s = parse_state(&one(&old_style_state(0, &[]))).unwrap();
    assert_eq!(s.id, 7);
    assert_eq!(s.creatorid, 0x0102_0304, "swapped back to raw");
    assert_eq!(s.direction, Direction::In);
    assert_eq!(s.rt_addr, None, "all-zero RT_ADDR is no gateway");
    assert_eq!(
        s.wire,
        PfKey {
            af: AF_INET,
            proto: 17,
            addr: [v4("198.51.100.7"), v4("10.0.0.5")],
            port: [53, 5353]
        }
    );
    assert_eq!(s.stack, s.wire);
    assert_eq!((s.rule, s.packets, s.creation), (u32::MAX, [0, 0], 0));
    // Without ORIG_IFNAME the original interface is unknown (empty).
    assert_eq!(
        parse_state(&one(&old_style_state(PF_ST_ORIG_IFNAME, &[]))).unwrap().orig_ifname,
        ""
    );
    // Without RT_ADDR too.
    assert_eq!(parse_state(&one(&old_style_state(PF_ST_RT_ADDR, &[]))).unwrap().rt_addr, None);
}

#[test]
fn af_translated_state_keeps_each_keys_family() {
    let wire = PfKey {
        af: AF_INET,
        proto: 6,
        addr: [v4("198.51.100.7"), v4("10.0.0.5")],
        port: [80, 1234],
    };
    let stack = PfKey {
        af: AF_INET6,
        proto: 6,
        addr: [v6("64:ff9b::c633:6407"), v6("fd00::5")],
        port: [80, 1234],
    };
    let s = PfState { wire, stack, rt_addr: Some(v6("fe80::1")), ..state(AF_INET) };
    let got = built(|b| state_message(b, FAMILY, 1, &s));
    assert_eq!(parse_state(&one(&got)), Ok(s));
}

#[test]
fn state_parser_is_strict() {
    let ok = old_style_state(0, &[]);
    assert!(parse_state(&one(&ok)).is_ok());
    for required in [
        PF_ST_ID,
        PF_ST_CREATORID,
        PF_ST_IFNAME,
        PF_ST_KEY_WIRE,
        PF_ST_KEY_STACK,
        PF_ST_AF,
        PF_ST_PROTO,
        PF_ST_DIRECTION,
    ] {
        let m = old_style_state(required, &[]);
        assert!(
            matches!(parse_state(&one(&m)), Err(NlCodecError::Missing(_))),
            "attribute {required} is required"
        );
    }
    let bad: Vec<(&str, (u16, Vec<u8>))> = vec![
        ("linux AF_INET6", (PF_ST_AF, nla(PF_ST_AF, &[10]))),
        ("AF_UNSPEC", (PF_ST_AF, nla(PF_ST_AF, &[0]))),
        ("IPv6 state with 4-byte addresses", (PF_ST_AF, nla(PF_ST_AF, &[AF_INET6]))),
        ("PF_INOUT", (PF_ST_DIRECTION, nla(PF_ST_DIRECTION, &[0]))),
        ("direction 3", (PF_ST_DIRECTION, nla(PF_ST_DIRECTION, &[3]))),
        ("u32 id", (PF_ST_ID, nla(PF_ST_ID, &7u32.to_ne_bytes()))),
        ("u64 creatorid", (PF_ST_CREATORID, nla(PF_ST_CREATORID, &7u64.to_ne_bytes()))),
        ("u16 proto", (PF_ST_PROTO, nla(PF_ST_PROTO, &17u16.to_ne_bytes()))),
        ("u16 af", (PF_ST_AF, nla(PF_ST_AF, &2u16.to_ne_bytes()))),
        ("8-byte rt_addr", (PF_ST_RT_ADDR, nla(PF_ST_RT_ADDR, &[1; 8]))),
        ("empty rt_addr", (PF_ST_RT_ADDR, nla(PF_ST_RT_ADDR, &[]))),
        ("u64 rule", (PF_ST_RULE, nla(PF_ST_RULE, &1u64.to_ne_bytes()))),
        ("16-char ifname", (PF_ST_IFNAME, nla(PF_ST_IFNAME, b"abcdefghijklmnop\0"))),
        ("non-UTF-8 ifname", (PF_ST_IFNAME, nla(PF_ST_IFNAME, b"em\xff\0"))),
        (
            "16-byte address in an IPv4 key",
            (
                PF_ST_KEY_WIRE,
                nest(
                    PF_ST_KEY_WIRE,
                    &[
                        nla(PF_STK_ADDR0, &[0; 16]),
                        nla(PF_STK_ADDR1, &[10, 0, 0, 5]),
                        nla(PF_STK_PORT0, &[0, 53]),
                        nla(PF_STK_PORT1, &[0, 53]),
                    ],
                ),
            ),
        ),
        (
            "4-byte port",
            (
                PF_ST_KEY_STACK,
                nest(
                    PF_ST_KEY_STACK,
                    &[
                        nla(PF_STK_ADDR0, &[1, 2, 3, 4]),
                        nla(PF_STK_ADDR1, &[10, 0, 0, 5]),
                        nla(PF_STK_PORT0, &53u32.to_be_bytes()),
                        nla(PF_STK_PORT1, &[0, 53]),
                    ],
                ),
            ),
        ),
        (
            "key without a port",
            (
                PF_ST_KEY_STACK,
                nest(
                    PF_ST_KEY_STACK,
                    &[
                        nla(PF_STK_ADDR0, &[1, 2, 3, 4]),
                        nla(PF_STK_ADDR1, &[10, 0, 0, 5]),
                        nla(PF_STK_PORT0, &[0, 53]),
                    ],
                ),
            ),
        ),
        (
            "wire key of another family than the state",
            (
                PF_ST_KEY_WIRE,
                nest(
                    PF_ST_KEY_WIRE,
                    &[
                        nla(PF_STK_ADDR0, &[0; 16]),
                        nla(PF_STK_ADDR1, &[0; 16]),
                        nla(PF_STK_PORT0, &[0, 53]),
                        nla(PF_STK_PORT1, &[0, 53]),
                        nla(PF_STK_AF, &[AF_INET6]),
                    ],
                ),
            ),
        ),
    ];
    for (why, (t, v)) in bad {
        let m = old_style_state(0, &[(t, v)]);
        assert!(parse_state(&one(&m)).is_err(), "{why} must be refused");
    }
    // Not a dump message at all.
    let done = NlMsg { msg_type: NLMSG_DONE, flags: NLM_F_MULTI, seq: 1, payload: &[0u8; 4] };
    assert!(matches!(parse_state(&done), Err(NlCodecError::Unexpected { .. })));
    let creators =
        msg(FAMILY, NLM_F_MULTI, 1, PFNL_CMD_GETCREATORS, &[nla(PF_ST_CREATORID, &[0; 4])]);
    assert!(matches!(parse_state(&one(&creators)), Err(NlCodecError::Unexpected { .. })));
}

// ---------------------------------------------------------------------------------------------
// Truncated and mis-sized kill / getstates attributes.

#[test]
fn mis_sized_kill_attributes_are_refused() {
    let rule = |parts: Vec<Vec<u8>>| nest(PF_CS_SRC, &parts);
    let z16 = [0u8; 16];
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("u32 id", nla(PF_CS_CMP_ID, &1u32.to_ne_bytes())),
        ("u64 creatorid", nla(PF_CS_CMP_CREATORID, &1u64.to_ne_bytes())),
        ("u16 direction", nla(PF_CS_CMP_DIR, &1u16.to_ne_bytes())),
        ("empty af", nla(PF_CS_AF, &[])),
        ("u16 proto", nla(PF_CS_PROTO, &6u16.to_ne_bytes())),
        ("u32 kill_match", nla(PF_CS_KILL_MATCH, &1u32.to_ne_bytes())),
        ("empty nat", nla(PF_CS_NAT, &[])),
        ("16-char ifname", nla(PF_CS_IFNAME, b"0123456789abcdef\0")),
        ("16-char ifname without NUL", nla(PF_CS_IFNAME, b"0123456789abcdef")),
        ("64-char label", nla(PF_CS_LABEL, &[b'x'; 64])),
        ("4-byte address", rule(zero_rule_addr_parts(&[1, 2, 3, 4], &z16, [0, 0], 0, 0))),
        ("17-byte mask", rule(zero_rule_addr_parts(&z16, &[0xff; 17], [0, 0], 0, 0))),
        ("u32 port", rule(vec![nla(PF_RAT_SRC_PORT, &80u32.to_be_bytes())])),
        ("u16 neg", rule(vec![nla(PF_RAT_NEG, &1u16.to_ne_bytes())])),
        ("u16 op", rule(vec![nla(PF_RAT_OP, &2u16.to_ne_bytes())])),
        ("table address", rule(vec![nest(PF_RAT_ADDR, &[nla(PF_AT_TYPE, &[3])])])),
        ("table name", rule(vec![nest(PF_RAT_ADDR, &[nla(PF_AT_TABLENAME, b"bad\0")])])),
    ];
    for (why, attr) in bad {
        let m = pf(PFNL_CMD_KILLSTATES, &[attr]);
        assert!(parse_kill_request(&one(&m)).is_err(), "{why} must be refused");
    }
    // The longest strings the kernel's buffers hold are accepted, with or without the NUL.
    let ok = pf(
        PFNL_CMD_KILLSTATES,
        &[
            nla(PF_CS_IFNAME, b"0123456789abcde"),
            nla(PF_CS_LABEL, &[&[b'y'; 63][..], &[0]].concat()),
        ],
    );
    let (_, k) = parse_kill_request(&one(&ok)).unwrap();
    assert_eq!((k.ifname.len(), k.label.len()), (15, 63));

    // An attribute longer than what is left of the message.
    let mut m = pf(PFNL_CMD_KILLSTATES, &[nla(PF_CS_CMP_ID, &1u64.to_ne_bytes())]);
    m[20..22].copy_from_slice(&40u16.to_ne_bytes());
    assert!(matches!(parse_kill_request(&one(&m)), Err(NlCodecError::Netlink(_))));
    // A nest whose inner attribute overruns the nest.
    let mut inner = nla(PF_RAT_SRC_PORT, &80u16.to_be_bytes());
    inner[0..2].copy_from_slice(&12u16.to_ne_bytes());
    let m = pf(PFNL_CMD_KILLSTATES, &[nla(PF_CS_DST | NLA_F_NESTED, &inner)]);
    assert!(parse_kill_request(&one(&m)).is_err());
    // A payload shorter than genlmsghdr.
    let short = NlMsg { msg_type: FAMILY, flags: 0, seq: 1, payload: &[PFNL_CMD_KILLSTATES, 0] };
    assert!(parse_kill_request(&short).is_err());
    assert!(parse_kill_reply(&short).is_err());
    assert!(parse_state(&short).is_err());
    assert!(parse_getstates_request(&short).is_err());
    // Another command, a control message.
    assert!(matches!(
        parse_kill_request(&one(&pf(PFNL_CMD_GETSTATES, &[]))),
        Err(NlCodecError::Unexpected { .. })
    ));
    let err = NlMsg { msg_type: NLMSG_ERROR, flags: 0, seq: 1, payload: &[0u8; 20] };
    assert!(matches!(parse_kill_request(&err), Err(NlCodecError::Unexpected { .. })));

    // Replies: KILLED must be a u32.
    for bad in [nla(PF_CS_KILLED, &1u64.to_ne_bytes()), nla(PF_CS_KILLED, &1u16.to_ne_bytes())] {
        let m = msg(FAMILY, 0, 1, PFNL_CMD_KILLSTATES, &[bad]);
        assert!(parse_kill_reply(&one(&m)).is_err());
    }
    // Family replies: the id must be a u16 above the controller's.
    for (why, id) in [
        ("u32 id", nla(CTRL_ATTR_FAMILY_ID, &0x20u32.to_ne_bytes())),
        ("controller id", nla(CTRL_ATTR_FAMILY_ID, &0x10u16.to_ne_bytes())),
        ("control-message id", nla(CTRL_ATTR_FAMILY_ID, &2u16.to_ne_bytes())),
    ] {
        let m = msg(
            GENL_ID_CTRL,
            0,
            1,
            CTRL_CMD_NEWFAMILY,
            &[id, nla(CTRL_ATTR_FAMILY_NAME, b"pfctl\0")],
        );
        assert!(parse_family_reply(&one(&m)).is_err(), "{why}");
    }
    let no_id =
        msg(GENL_ID_CTRL, 0, 1, CTRL_CMD_NEWFAMILY, &[nla(CTRL_ATTR_FAMILY_NAME, b"pfctl\0")]);
    assert_eq!(parse_family_reply(&one(&no_id)), Err(NlCodecError::Missing("CTRL_ATTR_FAMILY_ID")));
}

#[test]
fn getstates_requests_the_filter_cannot_express_are_refused() {
    let req =
        |attrs: &[Vec<u8>]| msg(FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, PFNL_CMD_GETSTATES, attrs);
    let mut gap = vec![0xff, 0x00, 0xff, 0];
    gap.resize(16, 0);
    let bad: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("u8 proto (the kernel parses u16)", vec![nla(PF_ST_PROTO, &[6])]),
        ("proto 256", vec![nla(PF_ST_PROTO, &256u16.to_ne_bytes())]),
        ("u16 af", vec![nla(PF_ST_AF, &2u16.to_ne_bytes())]),
        ("4-byte filter address", vec![nla(PF_ST_FILTER_ADDR, &[1, 2, 3, 4])]),
        ("8-byte mask", vec![nla(PF_ST_FILTER_MASK, &[0xff; 8])]),
        ("u64 id", vec![nla(PF_ST_ID, &1u64.to_ne_bytes())]),
        ("a single-state get", vec![nla(PF_ST_ID, &1u32.to_ne_bytes())]),
        ("a creator filter", vec![nla(PF_ST_CREATORID, &1u32.to_ne_bytes())]),
        ("16-char ifname", vec![nla(PF_ST_IFNAME, b"abcdefghijklmnop")]),
        ("non-contiguous mask", vec![nla(PF_ST_FILTER_MASK, &gap)]),
        (
            "IPv4 mask beyond 32 bits",
            vec![nla(PF_ST_AF, &[AF_INET]), nla(PF_ST_FILTER_MASK, &[0xff; 16])],
        ),
    ];
    for (why, attrs) in bad {
        assert!(parse_getstates_request(&one(&req(&attrs))).is_err(), "{why} must be refused");
    }
    // A zero id is no id, an empty name no name, a mask alone filters around ::.
    let ok = req(&[
        nla(PF_ST_ID, &0u32.to_ne_bytes()),
        nla(PF_ST_IFNAME, b"\0"),
        nla(PF_ST_FILTER_MASK, &[0xff; 16]),
    ]);
    assert_eq!(
        parse_getstates_request(&one(&ok)),
        Ok(StateFilter { addr: Some((v6("::"), 128)), ..StateFilter::default() })
    );
    assert!(matches!(
        parse_getstates_request(&one(&pf(PFNL_CMD_KILLSTATES, &[]))),
        Err(NlCodecError::Unexpected { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn ip(af: u8) -> BoxedStrategy<IpAddr> {
    let a4 = any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)));
    let a6 = any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)));
    match af {
        AF_INET => a4.boxed(),
        AF_INET6 => a6.boxed(),
        _ => prop_oneof![a4, a6].boxed(),
    }
}

fn rule_addr(af: u8) -> BoxedStrategy<RuleAddr> {
    let set = (
        prop::option::of((ip(af), 0u8..=128)),
        prop::option::of(any::<[u16; 2]>()),
        any::<bool>(),
        0u8..=9,
    )
        .prop_map(|(prefix, ports, neg, port_op)| {
            let mut r = prefix.map(|(a, l)| RuleAddr::prefix(&a, l)).unwrap_or_default();
            r.port = ports.unwrap_or_default();
            r.neg = neg;
            r.port_op = port_op;
            r
        });
    prop_oneof![1 => Just(RuleAddr::default()), 3 => set].boxed()
}

fn pf_kill() -> impl Strategy<Value = PfKill> {
    prop_oneof![Just(0u8), Just(AF_INET), Just(AF_INET6)].prop_flat_map(|af| {
        (
            (
                prop_oneof![Just(0u64), any::<u64>()],
                prop_oneof![Just(0u32), any::<u32>()],
                0u8..=2,
                prop_oneof![Just(0u8), any::<u8>()],
            ),
            (rule_addr(af), rule_addr(af), rule_addr(af)),
            ("[a-z0-9_.]{0,15}", "[ -~]{0,63}", any::<bool>(), any::<bool>()),
        )
            .prop_map(
                move |(
                    (id, creatorid, direction, proto),
                    (src, dst, rt_addr),
                    (ifname, label, kill_match, nat),
                )| {
                    PfKill {
                        id,
                        creatorid,
                        direction,
                        af,
                        proto,
                        src,
                        dst,
                        rt_addr,
                        ifname,
                        label,
                        kill_match,
                        nat,
                    }
                },
            )
    })
}

fn pf_key(af: u8, proto: u8) -> impl Strategy<Value = PfKey> {
    (ip(af), ip(af), any::<[u16; 2]>()).prop_map(move |(a, b, port)| PfKey {
        af,
        proto,
        addr: [a, b],
        port,
    })
}

fn pf_state() -> impl Strategy<Value = PfState> {
    (prop_oneof![Just(AF_INET), Just(AF_INET6)], any::<u8>()).prop_flat_map(|(af, proto)| {
        (
            (
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                prop_oneof![Just("all".to_string()), "[a-z][a-z0-9]{0,14}"],
                "[a-z][a-z0-9]{0,14}",
            ),
            (pf_key(af, proto), pf_key(af, proto), prop::option::of(ip(0))),
            (any::<u32>(), any::<[u64; 2]>(), any::<[u64; 2]>(), any::<u32>(), any::<u32>()),
        )
            .prop_map(
                |(
                    (id, creatorid, out, ifname, orig_ifname),
                    (wire, stack, rt_addr),
                    (rule, packets, bytes, creation, expire),
                )| PfState {
                    id,
                    creatorid,
                    direction: if out { Direction::Out } else { Direction::In },
                    ifname,
                    orig_ifname,
                    wire,
                    stack,
                    rt_addr,
                    rule,
                    packets,
                    bytes,
                    creation,
                    expire,
                },
            )
    })
}

fn state_filter() -> impl Strategy<Value = StateFilter> {
    (
        prop::option::of("[a-z][a-z0-9]{0,14}"),
        prop_oneof![Just(0u8), Just(AF_INET), Just(AF_INET6)],
        any::<u8>(),
        prop::option::of((ip(0), 0u8..=128)),
    )
        .prop_map(|(ifname, af, proto, addr)| {
            // Prefix lengths as the filter reports them back: clamped to the family's width.
            let addr = addr.map(|(a, l)| (a, if a.is_ipv4() { l.min(32) } else { l }));
            StateFilter { ifname, af, proto, addr }
        })
}

/// Every parser, on one message; none may panic, and whatever parses must re-encode to the
/// same value.
fn every_parser(m: &NlMsg<'_>) {
    let _ = parse_family_reply(m);
    let _ = parse_kill_reply(m);
    if let Ok((cmd, k)) = parse_kill_request(m) {
        let again = built(|b| kill_request(b, FAMILY, 1, cmd, &k));
        assert_eq!(parse_kill_request(&one(&again)), Ok((cmd, k)));
    }
    if let Ok(f) = parse_getstates_request(m) {
        let again = built(|b| getstates_request(b, FAMILY, 1, &f));
        let expect = StateFilter { af: f.wire_af(), ..f };
        assert_eq!(parse_getstates_request(&one(&again)), Ok(expect));
    }
    if let Ok(s) = parse_state(m) {
        let again = built(|b| state_message(b, FAMILY, 1, &s));
        assert_eq!(parse_state(&one(&again)), Ok(s));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kill_request_round_trips(k in pf_kill(), kill in any::<bool>(), seq in any::<u32>()) {
        let cmd = if kill { PFNL_CMD_KILLSTATES } else { PFNL_CMD_CLRSTATES };
        let bytes = built(|b| kill_request(b, FAMILY, seq, cmd, &k));
        let m = one(&bytes);
        prop_assert_eq!((m.msg_type, m.flags, m.seq), (FAMILY, NLM_F_REQUEST | NLM_F_ACK, seq));
        prop_assert_eq!(parse_kill_request(&m), Ok((cmd, k)));
    }

    #[test]
    fn state_round_trips(s in pf_state(), seq in any::<u32>()) {
        let bytes = built(|b| state_message(b, FAMILY, seq, &s));
        let m = one(&bytes);
        prop_assert_eq!((m.msg_type, m.flags, m.seq), (FAMILY, NLM_F_MULTI, seq));
        // The creator id travels byte-swapped (htonl) and comes back raw.
        let a = attrs_of(&bytes);
        let cid = &a.iter().find(|(t, _)| *t == PF_ST_CREATORID).unwrap().1;
        prop_assert_eq!(&cid[..], &s.creatorid.to_be_bytes()[..]);
        let expect = PfState { rt_addr: s.rt_addr.filter(|a| !a.is_unspecified()), ..s };
        prop_assert_eq!(parse_state(&m), Ok(expect));
    }

    #[test]
    fn getstates_filter_round_trips(f in state_filter(), seq in any::<u32>()) {
        let bytes = built(|b| getstates_request(b, FAMILY, seq, &f));
        let m = one(&bytes);
        prop_assert_eq!((m.msg_type, m.flags, m.seq), (FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq));
        let expect = StateFilter { af: f.wire_af(), ..f.clone() };
        prop_assert_eq!(parse_getstates_request(&m), Ok(expect.clone()));
        // The filter the kernel sees keeps the same states as the one that was asked for.
        prop_assert_eq!(expect.wire_af(), f.wire_af());
    }

    #[test]
    fn kill_reply_round_trips(killed in any::<u32>(), kill in any::<bool>()) {
        let cmd = if kill { PFNL_CMD_KILLSTATES } else { PFNL_CMD_CLRSTATES };
        let bytes = built(|b| kill_reply(b, FAMILY, 3, cmd, killed));
        prop_assert_eq!(parse_kill_reply(&one(&bytes)), Ok(Some(killed)));
    }

    #[test]
    fn arbitrary_messages_never_panic(
        msg_type in prop_oneof![Just(GENL_ID_CTRL), Just(FAMILY), Just(NLMSG_ERROR), any::<u16>()],
        cmd in prop_oneof![Just(PFNL_CMD_GETSTATES), Just(PFNL_CMD_KILLSTATES), Just(PFNL_CMD_CLRSTATES), Just(CTRL_CMD_NEWFAMILY), any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut payload = vec![cmd, 0, 0, 0];
        payload.extend_from_slice(&body);
        for p in [&payload[..], &body[..]] {
            every_parser(&NlMsg { msg_type, flags: 0, seq: 0, payload: p });
        }
    }

    #[test]
    fn arbitrary_buffers_never_panic(buf in prop::collection::vec(any::<u8>(), 0..1024)) {
        for m in NlMsgs::new(&buf).flatten() {
            every_parser(&m);
        }
    }

    #[test]
    fn corrupted_messages_never_panic(
        k in pf_kill(),
        s in pf_state(),
        f in state_filter(),
        which in 0usize..5,
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let bytes = built(|b| match which {
            0 => kill_request(b, FAMILY, 1, PFNL_CMD_KILLSTATES, &k),
            1 => state_message(b, FAMILY, 1, &s),
            2 => getstates_request(b, FAMILY, 1, &f),
            3 => family_reply(b, 1, 0x22),
            _ => kill_reply(b, FAMILY, 1, PFNL_CMD_CLRSTATES, 5),
        });
        let msg_type = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let mut payload = bytes[16..].to_vec();
        for (at, x) in flips {
            let i = at.index(payload.len());
            payload[i] ^= x;
        }
        if truncate {
            payload.truncate(cut.index(payload.len() + 1));
        }
        every_parser(&NlMsg { msg_type, flags: 0, seq: 1, payload: &payload });
    }
}

// ---------------------------------------------------------------------------------------------
// GETRULES: the filter ruleset's ticket.

#[test]
fn golden_getrules_request_for_the_main_filter_ruleset() {
    let got = built(|b| statecull_pf::nl::getrules_request(b, FAMILY, 1));
    // PF_GR_ANCHOR = 1 (""), PF_GR_ACTION = 2 (PF_PASS), as pfctl_get_rules_info sends them.
    let expect = pf(6, &[nla(1, b"\0"), nla(2, &[0])]);
    assert_eq!(got, expect);
    assert_eq!(got.len(), 36, "16 nlmsghdr + 4 genlmsghdr + 8 + 8");
    let (anchor, action) = statecull_pf::nl::parse_getrules_request(&one(&got)).unwrap();
    assert_eq!((anchor.as_str(), action), ("", 0));
}

#[test]
fn getrules_reply_carries_the_ticket_and_refuses_one_without_it() {
    // The kernel's reply: PF_GR_NR = 3, PF_GR_TICKET = 4, both u32.
    let reply =
        msg(FAMILY, 0, 9, 6, &[nla(3, &17u32.to_ne_bytes()), nla(4, &4242u32.to_ne_bytes())]);
    assert_eq!(built(|b| statecull_pf::nl::getrules_reply(b, FAMILY, 9, 17, 4242)), reply);
    assert_eq!(statecull_pf::nl::parse_getrules_reply(&one(&reply)).unwrap(), Some((17, 4242)));
    let no_ticket = msg(FAMILY, 0, 9, 6, &[nla(3, &17u32.to_ne_bytes())]);
    assert!(statecull_pf::nl::parse_getrules_reply(&one(&no_ticket)).is_err());
    let short = msg(FAMILY, 0, 9, 6, &[nla(3, &17u32.to_ne_bytes()), nla(4, &[1, 2])]);
    assert!(statecull_pf::nl::parse_getrules_reply(&one(&short)).is_err());
    // Another command's reply is not a ticket.
    let kill = msg(FAMILY, 0, 9, 9, &[nla(13, &3u32.to_ne_bytes())]);
    assert_eq!(statecull_pf::nl::parse_getrules_reply(&one(&kill)).unwrap(), None);
    // A request for another anchor is decoded as such (the model answers only the main one).
    let other = pf(6, &[nla(1, b"userrules\0"), nla(2, &[0])]);
    let (anchor, _) = statecull_pf::nl::parse_getrules_request(&one(&other)).unwrap();
    assert_eq!(anchor, "userrules");
}
