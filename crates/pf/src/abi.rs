//! The FreeBSD/amd64 C layouts the backend exchanges with `/dev/pf`, with compile-time size
//! and offset checks against pf-kernel.md §1 (figures computed from C replicas of the
//! 14/15-era headers; the kernel's own `_Static_assert`s pin 384 and 32), and the ioctl
//! request numbers.
//!
//! These types only describe memory layout; no code here touches the kernel. The listing
//! record (`pf_state_export`) is encoded and decoded byte by byte at offsets taken from the
//! `repr(C)` definition, so a layout mistake fails to compile or fails the tests rather than
//! misreading states.

use core::ffi::c_void;
use core::mem::{offset_of, size_of};
use std::net::IpAddr;

use crate::types::{
    AF_INET, AF_INET6, Direction, IFNAMSIZ, PfKey, PfState, addr_from_pf, pf_addr_bytes,
};

/// `struct pf_addr`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfAddr {
    pub bytes: [u8; 16],
}

/// `struct pfioc_nv`: the carrier of every nvlist ioctl.
#[repr(C)]
#[derive(Debug)]
pub struct PfiocNv {
    pub data: *mut c_void,
    pub len: usize,
    pub size: usize,
}

/// `struct pfioc_states_v2` (`DIOCGETSTATESV2`).
#[repr(C)]
#[derive(Debug)]
pub struct PfiocStatesV2 {
    pub ps_len: i32,
    pub ps_req_version: u64,
    pub ps_buf: *mut c_void,
}

/// `struct pf_state_key_export`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PfStateKeyExport {
    pub addr: [PfAddr; 2],
    /// Network byte order.
    pub port: [u16; 2],
}

/// `struct pf_state_peer_export` (packed, 32 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PfStatePeerExport {
    pub pfss_flags: u16,
    pub pfss_ttl: u8,
    pub scrub_flag: u8,
    pub pfss_ts_mod: u32,
    pub seqlo: u32,
    pub seqhi: u32,
    pub seqdiff: u32,
    pub max_win: u16,
    pub mss: u16,
    pub state: u8,
    pub wscale: u8,
    pub dummy: [u8; 6],
}

/// `struct pf_state_export` (384 bytes; `PF_STATE_VERSION` 20230404).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PfStateExport {
    pub version: u64,
    pub id: u64,
    pub ifname: [u8; IFNAMSIZ],
    pub orig_ifname: [u8; IFNAMSIZ],
    pub key: [PfStateKeyExport; 2],
    pub src: PfStatePeerExport,
    pub dst: PfStatePeerExport,
    pub rt_addr: PfAddr,
    pub rule: u32,
    pub anchor: u32,
    pub nat_rule: u32,
    pub creation: u32,
    pub expire: u32,
    pub spare0: u32,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub creatorid: u32,
    pub spare1: u32,
    pub af: u8,
    pub proto: u8,
    pub direction: u8,
    pub log: u8,
    pub state_flags_compat: u8,
    pub timeout: u8,
    pub sync_flags: u8,
    pub updates: u8,
    pub state_flags: u16,
    pub qid: u16,
    pub pqid: u16,
    pub dnpipe: u16,
    pub dnrpipe: u16,
    pub rtableid: i32,
    pub min_ttl: u8,
    pub set_tos: u8,
    pub max_mss: u16,
    pub set_prio: [u8; 2],
    pub rt: u8,
    pub rt_ifname: [u8; IFNAMSIZ],
    pub spare: [u8; 72],
}

/// `struct pf_state_cmp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PfStateCmp {
    pub id: u64,
    pub creatorid: u32,
    pub direction: u8,
    pub pad: [u8; 3],
}

/// `struct pf_addr_wrap` (the `p` union is a kernel pointer, kept as 8 opaque bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PfAddrWrap {
    pub addr: PfAddr,
    pub mask: PfAddr,
    pub p: u64,
    pub kind: u8,
    pub iflags: u8,
}

/// `struct pf_rule_addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PfRuleAddr {
    pub addr: PfAddrWrap,
    pub port: [u16; 2],
    pub neg: u8,
    pub port_op: u8,
}

/// `struct pfioc_state_kill` (the struct ioctls removed in FreeBSD 15; kept to pin the
/// layout the NV encoding replaces, and for 13.0's last-resort path).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PfiocStateKill {
    pub psk_pfcmp: PfStateCmp,
    pub psk_af: u8,
    pub psk_proto: i32,
    pub psk_src: PfRuleAddr,
    pub psk_dst: PfRuleAddr,
    pub psk_ifname: [u8; IFNAMSIZ],
    pub psk_label: [u8; 64],
    pub psk_killed: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<PfAddr>() == 16);
    assert!(size_of::<PfAddrWrap>() == 48);
    assert!(size_of::<PfRuleAddr>() == 56);
    assert!(offset_of!(PfRuleAddr, port) == 48);
    assert!(offset_of!(PfRuleAddr, neg) == 52);
    assert!(offset_of!(PfRuleAddr, port_op) == 53);
    assert!(size_of::<PfStateCmp>() == 16);
    assert!(size_of::<PfiocStateKill>() == 224);
    assert!(offset_of!(PfiocStateKill, psk_af) == 16);
    assert!(offset_of!(PfiocStateKill, psk_proto) == 20);
    assert!(offset_of!(PfiocStateKill, psk_src) == 24);
    assert!(offset_of!(PfiocStateKill, psk_dst) == 80);
    assert!(offset_of!(PfiocStateKill, psk_ifname) == 136);
    assert!(offset_of!(PfiocStateKill, psk_label) == 152);
    assert!(offset_of!(PfiocStateKill, psk_killed) == 216);
    assert!(size_of::<PfiocNv>() == 24);
    assert!(size_of::<PfiocStatesV2>() == 24);
    assert!(offset_of!(PfiocStatesV2, ps_req_version) == 8);
    assert!(offset_of!(PfiocStatesV2, ps_buf) == 16);
    assert!(size_of::<PfStateKeyExport>() == 36);
    assert!(size_of::<PfStatePeerExport>() == 32);
    assert!(size_of::<PfStateExport>() == 384);
    assert!(offset_of!(PfStateExport, id) == 8);
    assert!(offset_of!(PfStateExport, ifname) == 16);
    assert!(offset_of!(PfStateExport, orig_ifname) == 32);
    assert!(offset_of!(PfStateExport, key) == 48);
    assert!(offset_of!(PfStateExport, src) == 120);
    assert!(offset_of!(PfStateExport, dst) == 152);
    assert!(offset_of!(PfStateExport, rt_addr) == 184);
    assert!(offset_of!(PfStateExport, rule) == 200);
    assert!(offset_of!(PfStateExport, creation) == 212);
    assert!(offset_of!(PfStateExport, expire) == 216);
    assert!(offset_of!(PfStateExport, packets) == 224);
    assert!(offset_of!(PfStateExport, bytes) == 240);
    assert!(offset_of!(PfStateExport, creatorid) == 256);
    assert!(offset_of!(PfStateExport, af) == 264);
    assert!(offset_of!(PfStateExport, proto) == 265);
    assert!(offset_of!(PfStateExport, direction) == 266);
    assert!(offset_of!(PfStateExport, state_flags) == 272);
    assert!(offset_of!(PfStateExport, rtableid) == 284);
    assert!(offset_of!(PfStateExport, rt) == 294);
    assert!(offset_of!(PfStateExport, rt_ifname) == 295);
    assert!(offset_of!(PfStateExport, spare) == 311);
};

/// `PF_STATE_VERSION` of the 14/15-era export record.
pub const PF_STATE_VERSION: u64 = 20230404;
/// Bytes per `DIOCGETSTATESV2` record.
pub const STATE_EXPORT_LEN: usize = size_of::<PfStateExport>();

/// FreeBSD's `_IOWR(group, num, type)`: `IOC_INOUT | (len & IOCPARM_MASK) << 16 | group << 8
/// | num`, with a 13-bit length field (`sys/sys/ioccom.h`).
pub const fn iowr(group: u8, num: u8, len: usize) -> u64 {
    const IOC_INOUT: u64 = 0xC000_0000;
    const IOCPARM_MASK: u64 = 0x1fff;
    IOC_INOUT | (((len as u64) & IOCPARM_MASK) << 16) | ((group as u64) << 8) | num as u64
}

pub const DIOCCLRSTATESNV: u64 = iowr(b'D', 18, size_of::<PfiocNv>());
pub const DIOCGETSTATENV: u64 = iowr(b'D', 19, size_of::<PfiocNv>());
pub const DIOCKILLSTATESNV: u64 = iowr(b'D', 41, size_of::<PfiocNv>());
pub const DIOCGETSTATESV2: u64 = iowr(b'D', 93, size_of::<PfiocStatesV2>());
pub const DIOCKILLSTATES: u64 = iowr(b'D', 41, size_of::<PfiocStateKill>());
pub const DIOCGETRULES: u64 = iowr(b'D', 6, PFIOC_RULE_LEN);
pub const DIOCCLRSTATES: u64 = iowr(b'D', 18, size_of::<PfiocStateKill>());

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(DIOCKILLSTATESNV == 0xC018_4429);
    assert!(DIOCCLRSTATESNV == 0xC018_4412);
    assert!(DIOCGETSTATENV == 0xC018_4413);
    assert!(DIOCGETSTATESV2 == 0xC018_445D);
    assert!(DIOCKILLSTATES == 0xC0E0_4429);
    assert!(DIOCGETRULES == 0xCBE0_4406);
    assert!(DIOCCLRSTATES == 0xC0E0_4412);
};

/// `struct pfioc_rule` (`sys/net/pfvar.h`), the argument of `DIOCGETRULES`: four `u_int32_t`
/// (`action`, `ticket`, `pool_ticket`, `nr`), `anchor[MAXPATHLEN]`, `anchor_call[MAXPATHLEN]`,
/// then the userland `struct pf_rule` (`sys/netpfil/pf/pf.h`), 976 bytes on amd64 and
/// 8-aligned. FreeBSD 14 keeps that struct's size across the SCTP timeouts
/// (`timeout[PFTM_OLD_MAX]`, 20). The 976 was computed by compiling a transcription of 14's
/// `struct pf_rule` for x86_64 (the same LP64 layout rules), not read off a FreeBSD system: a
/// wrong figure changes the ioctl number, which the kernel then refuses (`ENOTTY`), so the
/// broker reports no ticket rather than a wrong one.
#[repr(C)]
#[derive(Debug)]
pub struct PfiocRule {
    pub action: u32,
    pub ticket: u32,
    pub pool_ticket: u32,
    pub nr: u32,
    pub anchor: [u8; 1024],
    pub anchor_call: [u8; 1024],
    /// `struct pf_rule`, opaque here; its `action` (the ruleset selector, `PF_PASS` = 0 for
    /// the filter ruleset) is at [`PF_RULE_ACTION`].
    pub rule: [u64; 122],
}

/// `sizeof(struct pfioc_rule)`.
pub const PFIOC_RULE_LEN: usize = size_of::<PfiocRule>();
/// `offsetof(struct pf_rule, action)`.
pub const PF_RULE_ACTION: usize = 904;
pub const PFIOC_RULE_TICKET: usize = offset_of!(PfiocRule, ticket);
pub const PFIOC_RULE_NR: usize = offset_of!(PfiocRule, nr);
pub const PFIOC_RULE_ANCHOR: usize = offset_of!(PfiocRule, anchor);
/// Where `rule.action` sits in the whole `struct pfioc_rule`.
pub const PFIOC_RULE_RULE_ACTION: usize = offset_of!(PfiocRule, rule) + PF_RULE_ACTION;

const _: () = {
    assert!(PFIOC_RULE_LEN == 3040);
    assert!(offset_of!(PfiocRule, action) == 0);
    assert!(PFIOC_RULE_TICKET == 4);
    assert!(offset_of!(PfiocRule, pool_ticket) == 8);
    assert!(PFIOC_RULE_NR == 12);
    assert!(PFIOC_RULE_ANCHOR == 16);
    assert!(offset_of!(PfiocRule, anchor_call) == 1040);
    assert!(offset_of!(PfiocRule, rule) == 2064);
    assert!(PFIOC_RULE_RULE_ACTION == 2968);
};

/// A `DIOCGETRULES` argument asking for the main filter ruleset: empty anchor, `rule.action`
/// `PF_PASS` (0), so all zero.
pub fn getrules_request() -> Vec<u8> {
    vec![0; PFIOC_RULE_LEN]
}

/// `(nr, ticket)` from what `DIOCGETRULES` wrote back (native-endian `u_int32_t`s); `None`
/// for a buffer that is not one `struct pfioc_rule`.
pub fn parse_getrules(buf: &[u8]) -> Option<(u32, u32)> {
    if buf.len() != PFIOC_RULE_LEN {
        return None;
    }
    let word = |at: usize| {
        buf.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_ne_bytes)
    };
    Some((word(PFIOC_RULE_NR)?, word(PFIOC_RULE_TICKET)?))
}

/// Why an export record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad pf_state_export record: {0}")]
pub struct ExportError(pub String);

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn name_at(b: &[u8], at: usize) -> Result<String, ExportError> {
    let raw = &b[at..at + IFNAMSIZ];
    let end = raw
        .iter()
        .position(|c| *c == 0)
        .ok_or_else(|| ExportError("interface name without NUL".into()))?;
    String::from_utf8(raw[..end].to_vec())
        .map_err(|_| ExportError("interface name is not UTF-8".into()))
}

fn put_name(b: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(IFNAMSIZ - 1);
    b[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

const KEY_LEN: usize = size_of::<PfStateKeyExport>();
const K_WIRE: usize = offset_of!(PfStateExport, key);
const K_STACK: usize = K_WIRE + KEY_LEN;
const K_PORT: usize = offset_of!(PfStateKeyExport, port);

fn key_at(b: &[u8], at: usize, af: u8, proto: u8) -> PfKey {
    let addr = |i: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[at + 16 * i..at + 16 * i + 16]);
        addr_from_pf(af, &a)
    };
    let port = |i: usize| u16::from_be_bytes([b[at + K_PORT + 2 * i], b[at + K_PORT + 2 * i + 1]]);
    PfKey { af, proto, addr: [addr(0), addr(1)], port: [port(0), port(1)] }
}

fn put_key(b: &mut [u8], at: usize, k: &PfKey) {
    for i in 0..2 {
        b[at + 16 * i..at + 16 * i + 16].copy_from_slice(&pf_addr_bytes(&k.addr[i]));
        b[at + K_PORT + 2 * i..at + K_PORT + 2 * i + 2].copy_from_slice(&k.port[i].to_be_bytes());
    }
}

/// Encode one state as the kernel's `DIOCGETSTATESV2` record (amd64, little-endian).
pub fn encode_export(s: &PfState) -> [u8; STATE_EXPORT_LEN] {
    let mut b = [0u8; STATE_EXPORT_LEN];
    b[..8].copy_from_slice(&PF_STATE_VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&s.id.to_le_bytes());
    put_name(&mut b, offset_of!(PfStateExport, ifname), &s.ifname);
    put_name(&mut b, offset_of!(PfStateExport, orig_ifname), &s.orig_ifname);
    put_key(&mut b, K_WIRE, &s.wire);
    put_key(&mut b, K_STACK, &s.stack);
    if let Some(gw) = s.rt_addr {
        let at = offset_of!(PfStateExport, rt_addr);
        b[at..at + 16].copy_from_slice(&pf_addr_bytes(&gw));
    }
    let put32 = |b: &mut [u8; STATE_EXPORT_LEN], at: usize, v: u32| {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes())
    };
    put32(&mut b, offset_of!(PfStateExport, rule), s.rule);
    put32(&mut b, offset_of!(PfStateExport, anchor), u32::MAX);
    put32(&mut b, offset_of!(PfStateExport, nat_rule), u32::MAX);
    put32(&mut b, offset_of!(PfStateExport, creation), s.creation);
    put32(&mut b, offset_of!(PfStateExport, expire), s.expire);
    for i in 0..2 {
        let p = offset_of!(PfStateExport, packets) + 8 * i;
        b[p..p + 8].copy_from_slice(&s.packets[i].to_le_bytes());
        let y = offset_of!(PfStateExport, bytes) + 8 * i;
        b[y..y + 8].copy_from_slice(&s.bytes[i].to_le_bytes());
    }
    put32(&mut b, offset_of!(PfStateExport, creatorid), s.creatorid);
    b[offset_of!(PfStateExport, af)] = s.wire.af;
    b[offset_of!(PfStateExport, proto)] = s.wire.proto;
    b[offset_of!(PfStateExport, direction)] = s.direction.wire();
    b
}

/// Decode one `DIOCGETSTATESV2` record, refusing anything that does not look like one.
pub fn decode_export(b: &[u8]) -> Result<PfState, ExportError> {
    if b.len() != STATE_EXPORT_LEN {
        return Err(ExportError(format!("{} bytes, expected {STATE_EXPORT_LEN}", b.len())));
    }
    let version = le_u64(b, 0);
    if version != PF_STATE_VERSION {
        return Err(ExportError(format!("version {version}, expected {PF_STATE_VERSION}")));
    }
    let af = b[offset_of!(PfStateExport, af)];
    if af != AF_INET && af != AF_INET6 {
        return Err(ExportError(format!("address family {af}")));
    }
    let proto = b[offset_of!(PfStateExport, proto)];
    let direction = Direction::from_wire(b[offset_of!(PfStateExport, direction)])
        .ok_or_else(|| ExportError("direction is neither in nor out".into()))?;
    let rt_at = offset_of!(PfStateExport, rt_addr);
    let mut rt = [0u8; 16];
    rt.copy_from_slice(&b[rt_at..rt_at + 16]);
    let rt_addr: IpAddr = addr_from_pf(af, &rt);
    Ok(PfState {
        id: le_u64(b, 8),
        creatorid: le_u32(b, offset_of!(PfStateExport, creatorid)),
        direction,
        ifname: name_at(b, offset_of!(PfStateExport, ifname))?,
        orig_ifname: name_at(b, offset_of!(PfStateExport, orig_ifname))?,
        wire: key_at(b, K_WIRE, af, proto),
        stack: key_at(b, K_STACK, af, proto),
        rt_addr: (!rt_addr.is_unspecified()).then_some(rt_addr),
        rule: le_u32(b, offset_of!(PfStateExport, rule)),
        packets: [
            le_u64(b, offset_of!(PfStateExport, packets)),
            le_u64(b, offset_of!(PfStateExport, packets) + 8),
        ],
        bytes: [
            le_u64(b, offset_of!(PfStateExport, bytes)),
            le_u64(b, offset_of!(PfStateExport, bytes) + 8),
        ],
        creation: le_u32(b, offset_of!(PfStateExport, creation)),
        expire: le_u32(b, offset_of!(PfStateExport, expire)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PfState {
        let k = PfKey {
            af: AF_INET6,
            proto: 6,
            addr: ["2001:db8:ff::5".parse().unwrap(), "2001:db8:1::a".parse().unwrap()],
            port: [443, 40000],
        };
        PfState {
            id: 0x0102_0304_0506_0708,
            creatorid: 0xdead_beef,
            direction: Direction::Out,
            ifname: "wan1".into(),
            orig_ifname: "wan1".into(),
            wire: PfKey { addr: [k.addr[0], "2001:db8:a::1".parse().unwrap()], ..k },
            stack: k,
            rt_addr: Some("2001:db8:a::fe".parse().unwrap()),
            rule: 7,
            packets: [1, u64::MAX],
            bytes: [3, 4],
            creation: 5,
            expire: 6,
        }
    }

    #[test]
    fn export_round_trip_at_the_reference_offsets() {
        let s = state();
        let b = encode_export(&s);
        assert_eq!(decode_export(&b).unwrap(), s);
        // Spot checks at the offsets pf-kernel.md §1.4 gives.
        assert_eq!(&b[16..20], b"wan1");
        assert_eq!(b[264], AF_INET6);
        assert_eq!(b[266], 2, "direction OUT");
        assert_eq!(
            u16::from_be_bytes([b[48 + 32], b[48 + 33]]),
            443,
            "wire port[0], network order"
        );
        assert_eq!(&b[184..186], &[0x20, 0x01], "rt_addr");
    }

    #[test]
    fn bad_records_are_refused() {
        let b = encode_export(&state());
        assert!(decode_export(&b[..383]).is_err());
        let mut v = b;
        v[0] ^= 1;
        assert!(decode_export(&v).is_err(), "version");
        let mut a = b;
        a[264] = 10;
        assert!(decode_export(&a).is_err(), "Linux AF_INET6 is not FreeBSD's");
        let mut d = b;
        d[266] = 0;
        assert!(decode_export(&d).is_err(), "direction");
        let mut n = b;
        n[16..32].copy_from_slice(&[b'x'; 16]);
        assert!(decode_export(&n).is_err(), "ifname without NUL");
    }
}
