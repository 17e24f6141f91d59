//! ctnetlink messages: the requests the backend sends and the entries it reads back.
//!
//! Pure code over [`crate::codec`]. Constants are from `linux/netfilter/nfnetlink_conntrack.h`
//! and `nfnetlink.h`; the filter semantics are those of `net/netfilter/nf_conntrack_netlink.c`
//! (6.18): `ctnetlink_alloc_filter`, `ctnetlink_filter_match`, `ctnetlink_del_conntrack`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use statecull_proto::{AddressFamily, Counters, L4, MarkMatch, StateKey, ipproto};

use crate::codec::{
    Attrs, MsgBuilder, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, get_be16, get_be32, get_be64, get_u8,
};
use crate::error::CtError;

pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
pub const IPCTNL_MSG_CT_GET: u16 = 1;
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
pub const IPCTNL_MSG_CT_GET_STATS: u16 = 5;

/// Full netlink message type of a ctnetlink message.
pub const fn msg_type(ct_msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | ct_msg
}

pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
/// `nfgenmsg.version`: with 1 the kernel honours the family on a flush; with 0 (`NFNETLINK_V0`)
/// a flush ignores it and removes entries of both families.
pub const NFNETLINK_V0: u8 = 0;
pub const NFNETLINK_V1: u8 = 1;

pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_PROTOINFO: u16 = 4;
pub const CTA_NAT_SRC: u16 = 6;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_MARK: u16 = 8;
pub const CTA_COUNTERS_ORIG: u16 = 9;
pub const CTA_COUNTERS_REPLY: u16 = 10;
pub const CTA_ID: u16 = 12;
pub const CTA_ZONE: u16 = 18;
pub const CTA_MARK_MASK: u16 = 21;
pub const CTA_FILTER: u16 = 25;

pub const CTA_TUPLE_IP: u16 = 1;
pub const CTA_TUPLE_PROTO: u16 = 2;
pub const CTA_TUPLE_ZONE: u16 = 3;

pub const CTA_IP_V4_SRC: u16 = 1;
pub const CTA_IP_V4_DST: u16 = 2;
pub const CTA_IP_V6_SRC: u16 = 3;
pub const CTA_IP_V6_DST: u16 = 4;

pub const CTA_PROTO_NUM: u16 = 1;
pub const CTA_PROTO_SRC_PORT: u16 = 2;
pub const CTA_PROTO_DST_PORT: u16 = 3;
pub const CTA_PROTO_ICMP_ID: u16 = 4;
pub const CTA_PROTO_ICMP_TYPE: u16 = 5;
pub const CTA_PROTO_ICMP_CODE: u16 = 6;
pub const CTA_PROTO_ICMPV6_ID: u16 = 7;
pub const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
pub const CTA_PROTO_ICMPV6_CODE: u16 = 9;

pub const CTA_COUNTERS_PACKETS: u16 = 1;
pub const CTA_COUNTERS_BYTES: u16 = 2;
pub const CTA_COUNTERS32_PACKETS: u16 = 3;
pub const CTA_COUNTERS32_BYTES: u16 = 4;

pub const CTA_PROTOINFO_TCP: u16 = 1;
pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;

pub const CTA_NAT_V4_MINIP: u16 = 1;
pub const CTA_NAT_V4_MAXIP: u16 = 2;
pub const CTA_NAT_V6_MINIP: u16 = 4;
pub const CTA_NAT_V6_MAXIP: u16 = 5;

pub const CTA_FILTER_ORIG_FLAGS: u16 = 1;
pub const CTA_FILTER_REPLY_FLAGS: u16 = 2;
pub const CTA_FILTER_F_IP_SRC: u32 = 1 << 0;
pub const CTA_FILTER_F_IP_DST: u32 = 1 << 1;
pub const CTA_FILTER_F_PROTO_NUM: u32 = 1 << 3;
pub const CTA_FILTER_F_PROTO_SRC_PORT: u32 = 1 << 4;
pub const CTA_FILTER_F_PROTO_DST_PORT: u32 = 1 << 5;

pub const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;

/// `TCP_CONNTRACK_ESTABLISHED`.
pub const TCP_CONNTRACK_ESTABLISHED: u8 = 3;

pub fn nfproto(family: AddressFamily) -> u8 {
    match family {
        AddressFamily::Ipv4 => NFPROTO_IPV4,
        AddressFamily::Ipv6 => NFPROTO_IPV6,
    }
}

/// What the kernel itself can be asked to filter on, for a dump or a flush.
///
/// Everything here is an exact match in the kernel. A filter never replaces the broker's own
/// matching on dumps: it only reduces what crosses the socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// `nfgenmsg` family; `None` means both families.
    pub family: Option<AddressFamily>,
    pub mark: Option<MarkMatch>,
    /// Exact original-direction fields (`CTA_FILTER` orig flags).
    pub orig_src: Option<IpAddr>,
    pub orig_dst: Option<IpAddr>,
    pub proto: Option<u8>,
    pub orig_src_port: Option<u16>,
    pub orig_dst_port: Option<u16>,
    /// Exact reply-direction destination: the NAT address (`CTA_FILTER` reply flags).
    pub reply_dst: Option<IpAddr>,
}

impl KernelFilter {
    /// True when `CTA_FILTER` (tuple filtering) is needed.
    pub fn uses_tuple_filter(&self) -> bool {
        self.orig_src.is_some()
            || self.orig_dst.is_some()
            || self.proto.is_some()
            || self.orig_src_port.is_some()
            || self.orig_dst_port.is_some()
            || self.reply_dst.is_some()
    }

    /// Does the kernel's filter semantics (`ctnetlink_filter_match`) admit this entry? Used
    /// to check the kernel's answers against what was asked.
    pub fn admits(&self, e: &CtEntry) -> bool {
        self.family.is_none_or(|f| e.orig.family() == f)
            && self.mark.is_none_or(|m| m.matches(e.mark))
            && self.orig_src.is_none_or(|a| e.orig.src == a)
            && self.orig_dst.is_none_or(|a| e.orig.dst == a)
            && self.proto.is_none_or(|p| e.orig.proto == p)
            && self.orig_src_port.is_none_or(|p| e.orig.src_port() == Some(p))
            && self.orig_dst_port.is_none_or(|p| e.orig.dst_port() == Some(p))
            && self.reply_dst.is_none_or(|a| e.reply.dst == a)
    }

    /// True when the filter narrows nothing (a flush with it would clear the table).
    pub fn is_empty(&self) -> bool {
        self.family.is_none() && self.mark.is_none() && !self.uses_tuple_filter()
    }

    fn orig_flags(&self) -> u32 {
        let mut f = 0;
        if self.orig_src.is_some() {
            f |= CTA_FILTER_F_IP_SRC;
        }
        if self.orig_dst.is_some() {
            f |= CTA_FILTER_F_IP_DST;
        }
        if self.proto.is_some() {
            f |= CTA_FILTER_F_PROTO_NUM;
        }
        if self.orig_src_port.is_some() {
            f |= CTA_FILTER_F_PROTO_SRC_PORT;
        }
        if self.orig_dst_port.is_some() {
            f |= CTA_FILTER_F_PROTO_DST_PORT;
        }
        f
    }

    fn reply_flags(&self) -> u32 {
        if self.reply_dst.is_some() { CTA_FILTER_F_IP_DST } else { 0 }
    }

    /// Append the filter's attributes to a GET (dump) or DELETE (flush) message.
    fn put_attrs(&self, b: &mut MsgBuilder) {
        if let Some(m) = self.mark {
            // Always send the mask: kernels before 4.19 only filter when both are present.
            b.attr_be32(CTA_MARK, m.value);
            b.attr_be32(CTA_MARK_MASK, m.mask);
        }
        if !self.uses_tuple_filter() {
            return;
        }
        let nest = b.nest_begin(CTA_FILTER);
        b.attr_u32(CTA_FILTER_ORIG_FLAGS, self.orig_flags());
        b.attr_u32(CTA_FILTER_REPLY_FLAGS, self.reply_flags());
        b.nest_end(nest);
        let orig_needed = self.orig_flags() != 0;
        if orig_needed {
            let t = b.nest_begin(CTA_TUPLE_ORIG);
            if self.orig_src.is_some() || self.orig_dst.is_some() {
                let ip = b.nest_begin(CTA_TUPLE_IP);
                if let Some(a) = self.orig_src {
                    put_ip(b, End::Src, &a);
                }
                if let Some(a) = self.orig_dst {
                    put_ip(b, End::Dst, &a);
                }
                b.nest_end(ip);
            }
            if let Some(p) = self.proto {
                let pr = b.nest_begin(CTA_TUPLE_PROTO);
                b.attr_u8(CTA_PROTO_NUM, p);
                if let Some(port) = self.orig_src_port {
                    b.attr_be16(CTA_PROTO_SRC_PORT, port);
                }
                if let Some(port) = self.orig_dst_port {
                    b.attr_be16(CTA_PROTO_DST_PORT, port);
                }
                b.nest_end(pr);
            }
            b.nest_end(t);
        }
        if let Some(a) = self.reply_dst {
            let t = b.nest_begin(CTA_TUPLE_REPLY);
            let ip = b.nest_begin(CTA_TUPLE_IP);
            put_ip(b, End::Dst, &a);
            b.nest_end(ip);
            b.nest_end(t);
        }
    }
}

/// Which end of a tuple an address is.
#[derive(Clone, Copy)]
enum End {
    Src,
    Dst,
}

/// Put an address with the attribute type of its own family, so an address can never be
/// sent under the other family's type (a 16-byte `CTA_IP_V4_DST`).
fn put_ip(b: &mut MsgBuilder, end: End, addr: &IpAddr) {
    match (addr, end) {
        (IpAddr::V4(a), End::Src) => b.attr(CTA_IP_V4_SRC, &a.octets()),
        (IpAddr::V4(a), End::Dst) => b.attr(CTA_IP_V4_DST, &a.octets()),
        (IpAddr::V6(a), End::Src) => b.attr(CTA_IP_V6_SRC, &a.octets()),
        (IpAddr::V6(a), End::Dst) => b.attr(CTA_IP_V6_DST, &a.octets()),
    }
}

/// A dump request (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`), filtered in the kernel.
///
/// Dumps always honour `nfgen_family`; a tuple filter needs a concrete family (the kernel
/// answers EOPNOTSUPP otherwise), which the caller guarantees.
pub fn dump_request(b: &mut MsgBuilder, seq: u32, filter: &KernelFilter) {
    let family = filter.family.map_or(NFPROTO_UNSPEC, nfproto);
    let m =
        b.begin(msg_type(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_DUMP, seq, family, NFNETLINK_V0);
    filter.put_attrs(b);
    b.end(m);
}

/// A flush (`IPCTNL_MSG_CT_DELETE` without a tuple): the kernel walks the table once and
/// deletes every entry the filter matches. With a family, `version = 1` makes the kernel
/// honour it; without one, `version = 0` and `AF_UNSPEC` cover both families.
pub fn flush_request(b: &mut MsgBuilder, seq: u32, filter: &KernelFilter) {
    let (family, version) = match filter.family {
        Some(f) => (nfproto(f), NFNETLINK_V1),
        None => (NFPROTO_UNSPEC, NFNETLINK_V0),
    };
    let m =
        b.begin(msg_type(IPCTNL_MSG_CT_DELETE), NLM_F_REQUEST | NLM_F_ACK, seq, family, version);
    filter.put_attrs(b);
    b.end(m);
}

/// The start-up probe: a tuple-filtered flush that cannot match anything (mark 0xffffffff
/// *and* reply destination 0.0.0.0, which no real entry has).
///
/// * 6.x kernels that accept `CTA_FILTER` on flush walk the table once and answer 0;
/// * 5.8+ kernels that do not answer `EOPNOTSUPP` before walking;
/// * older kernels, which ignore `CTA_FILTER`, read the reply tuple as a delete-by-tuple
///   and answer `EINVAL` (it has no source address), so nothing is deleted either way.
pub fn probe_tuple_flush_request(b: &mut MsgBuilder, seq: u32) {
    let filter = KernelFilter {
        family: Some(AddressFamily::Ipv4),
        mark: Some(MarkMatch { value: u32::MAX, mask: u32::MAX }),
        reply_dst: Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ..KernelFilter::default()
    };
    flush_request(b, seq, &filter);
}

/// `IPCTNL_MSG_CT_GET_STATS`: the number of entries in this network namespace.
pub fn stats_request(b: &mut MsgBuilder, seq: u32) {
    let m = b.begin(
        msg_type(IPCTNL_MSG_CT_GET_STATS),
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        NFNETLINK_V0,
    );
    b.end(m);
}

/// Parse a `GET_STATS` reply into the entry count.
pub fn parse_stats(attrs: Attrs<'_>) -> Result<u64, CtError> {
    for attr in attrs {
        let (kind, v) = attr?;
        if kind == CTA_STATS_GLOBAL_ENTRIES {
            return Ok(u64::from(get_be32(v, "CTA_STATS_GLOBAL_ENTRIES")?));
        }
    }
    Err(CtError::codec("stats reply without CTA_STATS_GLOBAL_ENTRIES"))
}

fn put_tuple(b: &mut MsgBuilder, kind: u16, key: &StateKey) {
    let t = b.nest_begin(kind);
    let ip = b.nest_begin(CTA_TUPLE_IP);
    put_ip(b, End::Src, &key.src);
    put_ip(b, End::Dst, &key.dst);
    b.nest_end(ip);
    let pr = b.nest_begin(CTA_TUPLE_PROTO);
    b.attr_u8(CTA_PROTO_NUM, key.proto);
    match key.l4 {
        L4::Ports { src, dst } => {
            b.attr_be16(CTA_PROTO_SRC_PORT, src);
            b.attr_be16(CTA_PROTO_DST_PORT, dst);
        }
        L4::Icmp { id, kind, code } => {
            let (id_k, type_k, code_k) = if key.proto == ipproto::ICMPV6 {
                (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)
            } else {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            };
            b.attr_be16(id_k, id);
            b.attr_u8(type_k, kind);
            b.attr_u8(code_k, code);
        }
        L4::None => {}
    }
    b.nest_end(pr);
    b.nest_end(t);
}

/// Append one message addressed to an entry by its original tuple (and zone).
fn by_tuple(
    b: &mut MsgBuilder,
    ct_msg: u16,
    seq: u32,
    orig: &StateKey,
    zone: u16,
    id: Option<u32>,
) {
    let m = b.begin(msg_type(ct_msg), NLM_F_REQUEST, seq, nfproto(orig.family()), NFNETLINK_V0);
    put_tuple(b, CTA_TUPLE_ORIG, orig);
    if zone != 0 {
        b.attr_be16(CTA_ZONE, zone);
    }
    if let Some(id) = id {
        b.attr_be32(CTA_ID, id);
    }
    b.end(m);
}

/// Append one delete-by-handle: original tuple, zone and `CTA_ID`. The kernel deletes the
/// entry only if the tuple is found and its id matches, so a stale handle never removes a
/// newer connection that reused the tuple. No `NLM_F_ACK`: the kernel answers only failures.
pub fn delete_request(b: &mut MsgBuilder, seq: u32, orig: &StateKey, id: u32, zone: u16) {
    by_tuple(b, IPCTNL_MSG_CT_DELETE, seq, orig, zone, Some(id));
}

/// Append one get-by-tuple (used to learn a handle's reply tuple before a kill when
/// protected prefixes must be honoured). The kernel answers with the entry or an error.
pub fn get_request(b: &mut MsgBuilder, seq: u32, orig: &StateKey, zone: u16) {
    by_tuple(b, IPCTNL_MSG_CT_GET, seq, orig, zone, None);
}

/// An entry to create (test tables only, see the `fill` feature).
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub orig: StateKey,
    /// SNAT the reply direction to this address (the kernel picks the port), like
    /// masquerade on a WAN.
    pub snat: Option<IpAddr>,
    pub mark: u32,
    pub timeout_secs: u32,
    pub tcp_established: bool,
}

/// Append one `IPCTNL_MSG_CT_NEW` (create only, no ACK).
pub fn new_request(b: &mut MsgBuilder, seq: u32, e: &NewEntry) {
    use crate::codec::{NLM_F_CREATE, NLM_F_EXCL};
    let m = b.begin(
        msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        nfproto(e.orig.family()),
        NFNETLINK_V0,
    );
    put_tuple(b, CTA_TUPLE_ORIG, &e.orig);
    let reply = StateKey {
        proto: e.orig.proto,
        src: e.orig.dst,
        dst: e.orig.src,
        l4: match e.orig.l4 {
            L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
            L4::Icmp { id, kind, code } => {
                L4::Icmp { id, kind: icmp_reply_type(e.orig.proto, kind), code }
            }
            L4::None => L4::None,
        },
    };
    put_tuple(b, CTA_TUPLE_REPLY, &reply);
    b.attr_be32(CTA_TIMEOUT, e.timeout_secs);
    b.attr_be32(CTA_MARK, e.mark);
    if e.tcp_established && e.orig.proto == ipproto::TCP {
        let pi = b.nest_begin(CTA_PROTOINFO);
        let tcp = b.nest_begin(CTA_PROTOINFO_TCP);
        b.attr_u8(CTA_PROTOINFO_TCP_STATE, TCP_CONNTRACK_ESTABLISHED);
        b.nest_end(tcp);
        b.nest_end(pi);
    }
    if let Some(nat) = e.snat {
        let n = b.nest_begin(CTA_NAT_SRC);
        match nat {
            IpAddr::V4(a) => {
                b.attr(CTA_NAT_V4_MINIP, &a.octets());
                b.attr(CTA_NAT_V4_MAXIP, &a.octets());
            }
            IpAddr::V6(a) => {
                b.attr(CTA_NAT_V6_MINIP, &a.octets());
                b.attr(CTA_NAT_V6_MAXIP, &a.octets());
            }
        }
        b.nest_end(n);
    }
    b.end(m);
}

fn icmp_reply_type(proto: u8, kind: u8) -> u8 {
    match (proto, kind) {
        (ipproto::ICMP, 8) => 0,       // echo request -> reply
        (ipproto::ICMPV6, 128) => 129, // echo request -> reply
        (_, k) => k,
    }
}

/// One conntrack entry as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub orig: StateKey,
    pub reply: StateKey,
    pub id: u32,
    pub zone: u16,
    pub mark: u32,
    pub status: u32,
    pub timeout: Option<u32>,
    pub tcp_state: Option<u8>,
    pub counters: Option<Counters>,
}

#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_id: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
}

fn parse_ip(v: &[u8], what: &str) -> Result<IpAddr, CtError> {
    match v.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        n => Err(CtError::codec(format!("{what}: {n}-byte address"))),
    }
}

fn parse_tuple(v: &[u8], zone: &mut u16) -> Result<StateKey, CtError> {
    let mut t = TupleParts::default();
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in Attrs::new(v) {
                    let (kind, v) = a?;
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = Some(parse_ip(v, "tuple source")?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => {
                            t.dst = Some(parse_ip(v, "tuple destination")?)
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attrs::new(v) {
                    let (kind, v) = a?;
                    match kind {
                        CTA_PROTO_NUM => t.proto = Some(get_u8(v, "CTA_PROTO_NUM")?),
                        CTA_PROTO_SRC_PORT => t.sport = Some(get_be16(v, "CTA_PROTO_SRC_PORT")?),
                        CTA_PROTO_DST_PORT => t.dport = Some(get_be16(v, "CTA_PROTO_DST_PORT")?),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.icmp_id = Some(get_be16(v, "ICMP id")?)
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.icmp_type = Some(get_u8(v, "ICMP type")?)
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.icmp_code = Some(get_u8(v, "ICMP code")?)
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => *zone = get_be16(v, "CTA_TUPLE_ZONE")?,
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(proto)) = (t.src, t.dst, t.proto) else {
        return Err(CtError::codec("tuple without addresses or protocol"));
    };
    if AddressFamily::of(&src) != AddressFamily::of(&dst) {
        return Err(CtError::codec("tuple mixes IPv4 and IPv6"));
    }
    let l4 = match (t.sport, t.dport, t.icmp_id, t.icmp_type, t.icmp_code) {
        (Some(src), Some(dst), ..) => L4::Ports { src, dst },
        (_, _, Some(id), Some(kind), Some(code)) => L4::Icmp { id, kind, code },
        _ => L4::None,
    };
    Ok(StateKey { proto, src, dst, l4 })
}

fn parse_counters(v: &[u8]) -> Result<(u64, u64), CtError> {
    let (mut packets, mut bytes) = (0, 0);
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        match kind {
            CTA_COUNTERS_PACKETS => packets = get_be64(v, "CTA_COUNTERS_PACKETS")?,
            CTA_COUNTERS_BYTES => bytes = get_be64(v, "CTA_COUNTERS_BYTES")?,
            CTA_COUNTERS32_PACKETS => packets = u64::from(get_be32(v, "CTA_COUNTERS32_PACKETS")?),
            CTA_COUNTERS32_BYTES => bytes = u64::from(get_be32(v, "CTA_COUNTERS32_BYTES")?),
            _ => {}
        }
    }
    Ok((packets, bytes))
}

fn parse_protoinfo(v: &[u8]) -> Result<Option<u8>, CtError> {
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        if kind == CTA_PROTOINFO_TCP {
            for a in Attrs::new(v) {
                let (kind, v) = a?;
                if kind == CTA_PROTOINFO_TCP_STATE {
                    return Ok(Some(get_u8(v, "CTA_PROTOINFO_TCP_STATE")?));
                }
            }
        }
    }
    Ok(None)
}

/// Parse the attributes of one dumped (or fetched) entry.
pub fn parse_entry(attrs: Attrs<'_>) -> Result<CtEntry, CtError> {
    let mut orig = None;
    let mut reply = None;
    let (mut id, mut zone, mut mark, mut status) = (None, 0u16, 0u32, 0u32);
    let mut timeout = None;
    let mut tcp_state = None;
    let mut c_orig = None;
    let mut c_reply = None;
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(v, &mut zone)?),
            CTA_TUPLE_REPLY => {
                let mut reply_zone = 0;
                reply = Some(parse_tuple(v, &mut reply_zone)?);
            }
            CTA_ID => id = Some(get_be32(v, "CTA_ID")?),
            CTA_ZONE => zone = get_be16(v, "CTA_ZONE")?,
            CTA_MARK => mark = get_be32(v, "CTA_MARK")?,
            CTA_STATUS => status = get_be32(v, "CTA_STATUS")?,
            CTA_TIMEOUT => timeout = Some(get_be32(v, "CTA_TIMEOUT")?),
            CTA_PROTOINFO => tcp_state = parse_protoinfo(v)?,
            CTA_COUNTERS_ORIG => c_orig = Some(parse_counters(v)?),
            CTA_COUNTERS_REPLY => c_reply = Some(parse_counters(v)?),
            _ => {}
        }
    }
    let (Some(orig), Some(reply), Some(id)) = (orig, reply, id) else {
        return Err(CtError::codec("entry without original tuple, reply tuple or CTA_ID"));
    };
    let counters = match (c_orig, c_reply) {
        (None, None) => None,
        (o, r) => {
            let (op, ob) = o.unwrap_or_default();
            let (rp, rb) = r.unwrap_or_default();
            Some(Counters { orig_packets: op, orig_bytes: ob, reply_packets: rp, reply_bytes: rb })
        }
    };
    Ok(CtEntry { orig, reply, id, zone, mark, status, timeout, tcp_state, counters })
}
