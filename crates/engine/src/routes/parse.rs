//! Decoding rtnetlink route and nexthop dumps, pure: received buffers in, [`Route`]s out.
//! Everything the watcher (`watch.rs`) reads goes through here, and so does the
//! `rtnetlink_routes` fuzz target ([`fuzzing::decode_dump`]); nothing here touches a socket.
//!
//! A route's next hops come from `RTA_GATEWAY`, `RTA_VIA` and every entry of
//! `RTA_MULTIPATH`; a route that refers to a nexthop object (`RTA_NH_ID`) without carrying
//! its next hops gets those of the object ([`resolve_nexthops`]), and an id that cannot be
//! resolved is an error, never "no gateway".

#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use statecull_netlink::{Attrs, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NlMsg, NlMsgs};
use statecull_proto::{AddressFamily, Prefix};

use crate::error::EngineError;

pub(super) const AF_UNSPEC: u8 = 0;
pub(super) const AF_INET: u8 = 2;
pub(super) const AF_INET6: u8 = 10;

pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTM_NEWNEXTHOP: u16 = 104;
pub(super) const RTM_GETNEXTHOP: u16 = 106;

/// `sizeof(struct rtmsg)`.
pub(super) const RTMSG_LEN: usize = 12;
/// `sizeof(struct nhmsg)`.
pub(super) const NHMSG_LEN: usize = 8;
/// `sizeof(struct rtnexthop)`.
const RTNH_LEN: usize = 8;
/// `sizeof(struct nexthop_grp)`.
const NH_GRP_LEN: usize = 8;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
const RTA_NH_ID: u16 = 30;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GATEWAY: u16 = 6;

/// One route, as far as the engine cares.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub family: AddressFamily,
    /// Routing table (`RTA_TABLE`, else `rtm_table`): 254 is `main`.
    pub table: u32,
    /// Destination prefix; `None` for a default route.
    pub dst: Option<Prefix>,
    /// Next-hop addresses: `RTA_GATEWAY`/`RTA_VIA`, or every multipath next hop. Empty for
    /// device routes, blackholes and the like.
    pub gateways: Vec<IpAddr>,
    pub oif: Option<u32>,
    /// Metric (`RTA_PRIORITY`).
    pub priority: Option<u32>,
    /// What the route does with a packet (`rtm_type`).
    pub kind: RouteKind,
}

/// A route's type (`rtm_type`), as far as forwarding cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteKind {
    /// `RTN_UNICAST`: forwarded to its next hops (or out of its device).
    Unicast,
    /// `RTN_BLACKHOLE`, `RTN_UNREACHABLE`, `RTN_PROHIBIT`: the packet is dropped.
    Drop,
    /// `RTN_THROW`: the lookup fails in this table and the rules go on.
    Throw,
    /// Any other type (local, broadcast, multicast, NAT, ...): not a way out.
    Other(u8),
}

impl RouteKind {
    pub(super) fn from_rtm_type(t: u8) -> Self {
        match t {
            1 => RouteKind::Unicast,
            6..=8 => RouteKind::Drop,
            9 => RouteKind::Throw,
            t => RouteKind::Other(t),
        }
    }
}

impl Route {
    /// A default route: no destination, or a /0 one.
    pub fn is_default(&self) -> bool {
        self.dst.is_none_or(|p| p.len == 0)
    }
}

/// A route and the nexthop object it may refer to.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) route: Route,
    pub(super) nh_id: Option<u32>,
}

pub(super) fn bad(message: impl Into<String>) -> EngineError {
    EngineError::Routes(message.into())
}

pub(super) fn nl(e: statecull_netlink::NlError) -> EngineError {
    EngineError::Routes(e.to_string())
}

fn u32_attr(v: &[u8], what: &str) -> Result<u32, EngineError> {
    statecull_netlink::get_u32(v, what).map_err(nl)
}

/// An address of a known length: 4 bytes for IPv4, 16 for IPv6.
pub(super) fn addr_of_len(v: &[u8], what: &str) -> Result<IpAddr, EngineError> {
    if let Ok(b) = <[u8; 4]>::try_from(v) {
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(v) {
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        Err(bad(format!("{what}: address of {} bytes", v.len())))
    }
}

/// An address of the route's family.
fn addr_of_family(v: &[u8], family: u8, what: &str) -> Result<IpAddr, EngineError> {
    let want = if family == AF_INET { 4 } else { 16 };
    if v.len() != want {
        return Err(bad(format!("{what}: {} bytes, expected {want}", v.len())));
    }
    addr_of_len(v, what)
}

/// `struct rtvia { __kernel_sa_family_t rtvia_family; __u8 rtvia_addr[]; }`.
fn via(v: &[u8]) -> Result<IpAddr, EngineError> {
    if v.len() < 2 {
        return Err(bad("RTA_VIA shorter than its family"));
    }
    let family = u16::from_ne_bytes([v[0], v[1]]);
    match (family, v.len() - 2) {
        (f, 4) if f == u16::from(AF_INET) => addr_of_len(&v[2..], "RTA_VIA"),
        (f, 16) if f == u16::from(AF_INET6) => addr_of_len(&v[2..], "RTA_VIA"),
        (f, n) => Err(bad(format!("RTA_VIA: family {f} with {n} address bytes"))),
    }
}

/// The next hops of `RTA_MULTIPATH`: `struct rtnexthop` entries, each followed by its own
/// attributes, each 4-byte aligned.
fn multipath(mut v: &[u8], family: u8, out: &mut Vec<IpAddr>) -> Result<(), EngineError> {
    while !v.is_empty() {
        if v.len() < RTNH_LEN {
            return Err(bad("truncated rtnexthop"));
        }
        let len = usize::from(u16::from_ne_bytes([v[0], v[1]]));
        if len < RTNH_LEN || len > v.len() {
            return Err(bad(format!("rtnexthop length {len} outside 8..={}", v.len())));
        }
        for attr in Attrs::new(&v[RTNH_LEN..len]) {
            let (kind, value) = attr.map_err(nl)?;
            match kind {
                RTA_GATEWAY => out.push(addr_of_family(value, family, "nexthop RTA_GATEWAY")?),
                RTA_VIA => out.push(via(value)?),
                _ => {}
            }
        }
        v = &v[statecull_netlink::align4(len).min(v.len())..];
    }
    Ok(())
}

/// Decode one `RTM_NEWROUTE` payload; `None` for families other than IPv4 and IPv6.
pub(super) fn parse_route(payload: &[u8]) -> Result<Option<Parsed>, EngineError> {
    if payload.len() < RTMSG_LEN {
        return Err(bad(format!("rtmsg of {} bytes, expected {RTMSG_LEN}", payload.len())));
    }
    let family = payload[0];
    let af = match family {
        AF_INET => AddressFamily::Ipv4,
        AF_INET6 => AddressFamily::Ipv6,
        _ => return Ok(None),
    };
    let dst_len = payload[1];
    if dst_len > af.bits() {
        return Err(bad(format!("destination length {dst_len} for {af:?}")));
    }
    let mut table = u32::from(payload[4]);
    let kind = RouteKind::from_rtm_type(payload[7]);
    let mut dst_addr = None;
    let mut gateways = Vec::new();
    let mut oif = None;
    let mut priority = None;
    let mut nh_id = None;
    for attr in Attrs::new(&payload[RTMSG_LEN..]) {
        let (kind, value) = attr.map_err(nl)?;
        match kind {
            RTA_DST => dst_addr = Some(addr_of_family(value, family, "RTA_DST")?),
            RTA_GATEWAY => gateways.push(addr_of_family(value, family, "RTA_GATEWAY")?),
            RTA_VIA => gateways.push(via(value)?),
            RTA_MULTIPATH => multipath(value, family, &mut gateways)?,
            RTA_OIF => oif = Some(u32_attr(value, "RTA_OIF")?),
            RTA_PRIORITY => priority = Some(u32_attr(value, "RTA_PRIORITY")?),
            RTA_TABLE => table = u32_attr(value, "RTA_TABLE")?,
            RTA_NH_ID => nh_id = Some(u32_attr(value, "RTA_NH_ID")?),
            _ => {}
        }
    }
    let dst = match (dst_addr, dst_len) {
        (None, 0) => None,
        (Some(addr), len) => Some(Prefix { addr, len }),
        (None, len) => return Err(bad(format!("/{len} route without RTA_DST"))),
    };
    Ok(Some(Parsed {
        route: Route { family: af, table, dst, gateways, oif, priority, kind },
        nh_id,
    }))
}

/// What a buffer of dump messages held.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    /// `NLMSG_DONE` seen: the dump is complete.
    pub(super) done: bool,
    /// `NLM_F_DUMP_INTR` seen: the table changed during the dump; its result is inconsistent.
    pub(super) interrupted: bool,
}

/// Walk the messages of one received buffer, skipping those whose sequence number is not
/// `seq` (when given). Errors on `NLMSG_ERROR` (other than an ACK), on an `NLMSG_DONE` that
/// carries an error, on `NLMSG_OVERRUN` and on anything malformed.
pub(super) fn walk<'a>(
    buf: &'a [u8],
    seq: Option<u32>,
    mut each: impl FnMut(NlMsg<'a>) -> Result<(), EngineError>,
) -> Result<Chunk, EngineError> {
    let mut chunk = Chunk::default();
    for msg in NlMsgs::new(buf) {
        let msg = msg.map_err(nl)?;
        if seq.is_some_and(|s| s != msg.seq) {
            continue;
        }
        if msg.flags & statecull_netlink::NLM_F_DUMP_INTR != 0 {
            chunk.interrupted = true;
        }
        match msg.msg_type {
            NLMSG_ERROR => {
                let (errno, _) = msg.error().map_err(nl)?;
                if errno != 0 {
                    return Err(bad(format!(
                        "kernel answered: {}",
                        std::io::Error::from_raw_os_error(errno.saturating_neg())
                    )));
                }
            }
            NLMSG_DONE => {
                if let Ok(b) = <[u8; 4]>::try_from(msg.payload.get(..4).unwrap_or(&[])) {
                    let errno = i32::from_ne_bytes(b);
                    if errno < 0 {
                        return Err(bad(format!(
                            "dump failed: {}",
                            std::io::Error::from_raw_os_error(errno.saturating_neg())
                        )));
                    }
                }
                chunk.done = true;
            }
            NLMSG_OVERRUN => return Err(bad("netlink overrun")),
            _ => each(msg)?,
        }
    }
    Ok(chunk)
}

/// Parse a buffer of netlink messages: every `RTM_NEWROUTE` of IPv4 or IPv6 becomes a
/// [`Route`]; other messages (and other families) are skipped. A truncated or malformed
/// message, or an `NLMSG_ERROR` that is not an ACK, is an error.
pub fn parse_routes(buf: &[u8]) -> Result<Vec<Route>, EngineError> {
    let mut out = Vec::new();
    walk(buf, None, |msg| {
        if msg.msg_type == RTM_NEWROUTE
            && let Some(p) = parse_route(msg.payload)?
        {
            out.push(p.route);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Default routes (no destination, or /0) in any table with `gw` among their next hops.
pub fn default_routes_via(routes: &[Route], gw: IpAddr) -> Vec<&Route> {
    routes.iter().filter(|r| r.is_default() && r.gateways.contains(&gw)).collect()
}

/// A nexthop object: its own gateway, or the members of its group.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Nexthop {
    gateway: Option<IpAddr>,
    group: Vec<u32>,
}

/// Decode one `RTM_NEWNEXTHOP` payload into (id, nexthop).
pub(super) fn parse_nexthop(payload: &[u8]) -> Result<Option<(u32, Nexthop)>, EngineError> {
    if payload.len() < NHMSG_LEN {
        return Err(bad(format!("nhmsg of {} bytes, expected {NHMSG_LEN}", payload.len())));
    }
    let mut id = None;
    let mut nh = Nexthop::default();
    for attr in Attrs::new(&payload[NHMSG_LEN..]) {
        let (kind, value) = attr.map_err(nl)?;
        match kind {
            NHA_ID => id = Some(u32_attr(value, "NHA_ID")?),
            NHA_GATEWAY => nh.gateway = Some(addr_of_len(value, "NHA_GATEWAY")?),
            NHA_GROUP => {
                if value.len() % NH_GRP_LEN != 0 {
                    return Err(bad(format!("NHA_GROUP of {} bytes", value.len())));
                }
                for member in value.chunks_exact(NH_GRP_LEN) {
                    nh.group.push(u32::from_ne_bytes([member[0], member[1], member[2], member[3]]));
                }
            }
            _ => {}
        }
    }
    Ok(id.map(|id| (id, nh)))
}

/// Give routes that refer to nexthop objects (and carry no next hop themselves) the
/// gateways of those objects. An unknown id is an error.
pub(super) fn resolve_nexthops(
    parsed: Vec<Parsed>,
    nexthops: &HashMap<u32, Nexthop>,
) -> Result<Vec<Route>, EngineError> {
    let lookup = |id: u32| {
        nexthops.get(&id).ok_or_else(|| bad(format!("route uses unknown nexthop object {id}")))
    };
    let mut out = Vec::with_capacity(parsed.len());
    for Parsed { mut route, nh_id } in parsed {
        if let Some(id) = nh_id.filter(|_| route.gateways.is_empty()) {
            let nh = lookup(id)?;
            route.gateways.extend(nh.gateway);
            for member in &nh.group {
                route.gateways.extend(lookup(*member)?.gateway);
            }
            route.gateways.dedup();
        }
        out.push(route);
    }
    Ok(out)
}

/// A dump request: `nlmsghdr` + a zeroed family header (`rtmsg`/`nhmsg`) naming `family`.
pub(super) fn dump_request(msg_type: u16, seq: u32, family: u8, header_len: usize) -> Vec<u8> {
    let len = statecull_netlink::NLMSG_HDRLEN + header_len;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    b.extend_from_slice(&msg_type.to_ne_bytes());
    b.extend_from_slice(
        &(statecull_netlink::NLM_F_REQUEST | statecull_netlink::NLM_F_DUMP).to_ne_bytes(),
    );
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.resize(len, 0);
    b
}

/// The pure decoding behind `RouteWatcher::dump`, for the fuzz targets (`fuzz/`): not
/// part of the engine's API.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;

    use super::{
        EngineError, RTM_NEWNEXTHOP, RTM_NEWROUTE, Route, parse_nexthop, parse_route,
        resolve_nexthops, walk,
    };
    use crate::routes::rules::{RTM_NEWRULE, Rule, parse_rule};

    /// Decode a rule dump (received buffers) as the watcher does.
    pub fn decode_rules(buf: &[u8], seq: Option<u32>) -> Result<Vec<Rule>, EngineError> {
        let mut out = Vec::new();
        walk(buf, seq, |m| {
            if m.msg_type == RTM_NEWRULE
                && let Some(r) = parse_rule(m.payload)?
            {
                out.push(r);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Decode a route dump and a nexthop dump (received buffers, messages of other sequence
    /// numbers than `seq` skipped when given) as the watcher does, nexthop objects resolved.
    pub fn decode_dump(
        routes: &[u8],
        nexthops: &[u8],
        seq: Option<u32>,
    ) -> Result<Vec<Route>, EngineError> {
        let mut parsed = Vec::new();
        walk(routes, seq, |m| {
            if m.msg_type == RTM_NEWROUTE
                && let Some(p) = parse_route(m.payload)?
            {
                parsed.push(p);
            }
            Ok(())
        })?;
        let mut objects = HashMap::new();
        walk(nexthops, seq, |m| {
            if m.msg_type == RTM_NEWNEXTHOP
                && let Some((id, nh)) = parse_nexthop(m.payload)?
            {
                objects.insert(id, nh);
            }
            Ok(())
        })?;
        resolve_nexthops(parsed, &objects)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// A netlink message: header, family header, attributes (kind, value), native endian.
    fn msg(
        msg_type: u16,
        flags: u16,
        seq: u32,
        header: &[u8],
        attrs: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut body = header.to_vec();
        for (kind, value) in attrs {
            let len = u16::try_from(4 + value.len()).unwrap();
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(statecull_netlink::align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&msg_type.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn rtmsg(family: u8, dst_len: u8, table: u8) -> Vec<u8> {
        vec![family, dst_len, 0, 0, table, 3, 0, 1, 0, 0, 0, 0]
    }

    fn u32v(v: u32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A v4 default route in `main` via 198.51.100.254, metric 100, out of ifindex 2, as the
    /// kernel sends it in a dump (x86-64 byte order).
    #[cfg(target_endian = "little")]
    const GOLDEN_V4_DEFAULT: [u8; 60] = [
        0x3c, 0x00, 0x00, 0x00, // nlmsg_len 60
        0x18, 0x00, // RTM_NEWROUTE
        0x02, 0x00, // NLM_F_MULTI
        0x01, 0x00, 0x00, 0x00, // seq 1
        0x00, 0x00, 0x00, 0x00, // pid 0
        0x02, 0x00, 0x00, 0x00, // AF_INET, dst_len 0, src_len 0, tos 0
        0xfe, 0x04, 0x00, 0x01, // table main, proto static, scope universe, unicast
        0x00, 0x00, 0x00, 0x00, // rtm_flags
        0x08, 0x00, 0x0f, 0x00, 0xfe, 0x00, 0x00, 0x00, // RTA_TABLE 254
        0x08, 0x00, 0x06, 0x00, 0x64, 0x00, 0x00, 0x00, // RTA_PRIORITY 100
        0x08, 0x00, 0x05, 0x00, 198, 51, 100, 254, // RTA_GATEWAY
        0x08, 0x00, 0x04, 0x00, 0x02, 0x00, 0x00, 0x00, // RTA_OIF 2
    ];

    #[cfg(target_endian = "little")]
    #[test]
    fn golden_v4_default_route() {
        let routes = parse_routes(&GOLDEN_V4_DEFAULT).unwrap();
        assert_eq!(
            routes,
            vec![Route {
                family: AddressFamily::Ipv4,
                table: 254,
                dst: None,
                gateways: vec![ip("198.51.100.254")],
                oif: Some(2),
                priority: Some(100),
                kind: RouteKind::Unicast,
            }]
        );
        assert!(routes[0].is_default());
        // The test builder produces the same bytes.
        let built = msg(
            RTM_NEWROUTE,
            2,
            1,
            &[2, 0, 0, 0, 254, 4, 0, 1, 0, 0, 0, 0],
            &[
                (RTA_TABLE, u32v(254)),
                (RTA_PRIORITY, u32v(100)),
                (RTA_GATEWAY, vec![198, 51, 100, 254]),
                (RTA_OIF, u32v(2)),
            ],
        );
        assert_eq!(built, GOLDEN_V4_DEFAULT);
    }

    fn rtnh(ifindex: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut a = Vec::new();
        for (kind, value) in attrs {
            a.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
            a.extend_from_slice(&kind.to_ne_bytes());
            a.extend_from_slice(value);
            a.resize(statecull_netlink::align4(a.len()), 0);
        }
        let mut n = Vec::new();
        n.extend_from_slice(&u16::try_from(8 + a.len()).unwrap().to_ne_bytes());
        n.push(0); // flags
        n.push(0); // hops
        n.extend_from_slice(&ifindex.to_ne_bytes());
        n.extend_from_slice(&a);
        n
    }

    fn v6(s: &str) -> Vec<u8> {
        s.parse::<Ipv6Addr>().unwrap().octets().to_vec()
    }

    #[test]
    fn v6_multipath_route() {
        let mut mp = rtnh(2, &[(RTA_GATEWAY, v6("2001:db8::1"))]);
        mp.extend(rtnh(3, &[(RTA_GATEWAY, v6("2001:db8:1::1"))]));
        let buf = msg(
            RTM_NEWROUTE,
            2,
            7,
            &rtmsg(AF_INET6, 0, 254),
            &[(RTA_TABLE, u32v(254)), (RTA_PRIORITY, u32v(1024)), (RTA_MULTIPATH, mp)],
        );
        let routes = parse_routes(&buf).unwrap();
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!(r.family, AddressFamily::Ipv6);
        assert_eq!(r.gateways, vec![ip("2001:db8::1"), ip("2001:db8:1::1")]);
        assert_eq!(r.oif, None);
        assert_eq!(r.priority, Some(1024));
        assert_eq!(default_routes_via(&routes, ip("2001:db8:1::1")).len(), 1);
        assert!(default_routes_via(&routes, ip("2001:db8::2")).is_empty());
    }

    #[test]
    fn prefixes_tables_via_and_skipped_messages() {
        // A /24 in table 1000 (RTA_TABLE beyond u8), a v4 default via an IPv6 next hop
        // (RTA_VIA), an MPLS route (skipped), a link message (skipped), an ACK and DONE.
        let mut via6 = u16::from(AF_INET6).to_ne_bytes().to_vec();
        via6.extend(v6("2001:db8::fe"));
        let mut buf = msg(
            RTM_NEWROUTE,
            2,
            1,
            &rtmsg(AF_INET, 24, 252),
            &[(RTA_TABLE, u32v(1000)), (RTA_DST, vec![203, 0, 113, 0]), (RTA_OIF, u32v(4))],
        );
        buf.extend(msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 0, 254), &[(RTA_VIA, via6)]));
        buf.extend(msg(RTM_NEWROUTE, 2, 1, &rtmsg(28, 20, 254), &[]));
        buf.extend(msg(16, 2, 1, &[0; 16], &[]));
        buf.extend(msg(NLMSG_ERROR, 0, 1, &[0u8; 20], &[]));
        buf.extend(msg(NLMSG_DONE, 2, 1, &[0u8; 4], &[]));
        let routes = parse_routes(&buf).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].table, 1000);
        assert_eq!(routes[0].dst, Some(Prefix { addr: ip("203.0.113.0"), len: 24 }));
        assert!(!routes[0].is_default());
        assert!(routes[0].gateways.is_empty());
        assert_eq!(routes[1].gateways, vec![ip("2001:db8::fe")]);
        assert_eq!(default_routes_via(&routes, ip("2001:db8::fe")).len(), 1);
        // An explicit 0.0.0.0/0 is a default route too.
        let zero = msg(
            RTM_NEWROUTE,
            2,
            1,
            &rtmsg(AF_INET, 0, 254),
            &[(RTA_DST, vec![0, 0, 0, 0]), (RTA_GATEWAY, vec![192, 0, 2, 1])],
        );
        let routes = parse_routes(&zero).unwrap();
        assert_eq!(routes[0].dst, Some(Prefix { addr: ip("0.0.0.0"), len: 0 }));
        assert_eq!(default_routes_via(&routes, ip("192.0.2.1")).len(), 1);
    }

    #[test]
    fn truncation_and_errors() {
        let good = msg(
            RTM_NEWROUTE,
            2,
            1,
            &rtmsg(AF_INET, 0, 254),
            &[(RTA_GATEWAY, vec![198, 51, 100, 254])],
        );
        // Every truncation of a valid message is an error, never a panic or a silent skip.
        for cut in 1..good.len() {
            assert!(parse_routes(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A message whose length claims more than the buffer.
        let mut long = good.clone();
        long[0] = long[0].wrapping_add(8);
        assert!(parse_routes(&long).is_err());
        // rtmsg too short for its header.
        assert!(parse_routes(&msg(RTM_NEWROUTE, 2, 1, &[2, 0, 0, 0], &[])).is_err());
        // A gateway of the wrong size; a destination length beyond the family.
        let wrong = msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 0, 254), &[(RTA_GATEWAY, v6("::1"))]);
        assert!(parse_routes(&wrong).is_err());
        let over = msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 33, 254), &[(RTA_DST, vec![0; 4])]);
        assert!(parse_routes(&over).is_err());
        let nodst = msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 8, 254), &[]);
        assert!(parse_routes(&nodst).is_err());
        // A bad rtnexthop length inside RTA_MULTIPATH.
        let mut mp = rtnh(2, &[(RTA_GATEWAY, vec![192, 0, 2, 1])]);
        mp[0] = 200;
        let badmp = msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 0, 254), &[(RTA_MULTIPATH, mp)]);
        assert!(parse_routes(&badmp).is_err());
    }

    #[test]
    fn nlmsg_error_is_an_error() {
        let mut payload = (-1i32).to_ne_bytes().to_vec(); // -EPERM
        payload.extend(dump_request(RTM_GETROUTE, 5, AF_INET, RTMSG_LEN)[..16].iter());
        let mut buf = msg(NLMSG_ERROR, 0, 5, &payload, &[]);
        let e = parse_routes(&buf).unwrap_err().to_string();
        assert!(e.contains("not permitted"), "{e}");
        // Also after a good route.
        let mut with_route = GOOD_ROUTE();
        with_route.append(&mut buf);
        assert!(parse_routes(&with_route).is_err());
        // A DONE carrying an error, and an overrun.
        let done = msg(NLMSG_DONE, 2, 1, &(-16i32).to_ne_bytes(), &[]);
        assert!(parse_routes(&done).is_err());
        assert!(parse_routes(&msg(NLMSG_OVERRUN, 0, 1, &[], &[])).is_err());
    }

    #[allow(non_snake_case)]
    fn GOOD_ROUTE() -> Vec<u8> {
        msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 0, 254), &[(RTA_GATEWAY, vec![192, 0, 2, 1])])
    }

    #[test]
    fn dump_sequence_filter_and_interrupt_flag() {
        let mut buf = GOOD_ROUTE();
        buf.extend(msg(
            RTM_NEWROUTE,
            2 | statecull_netlink::NLM_F_DUMP_INTR,
            9,
            &rtmsg(2, 0, 254),
            &[],
        ));
        buf.extend(msg(NLMSG_DONE, 2, 9, &[0u8; 4], &[]));
        let mut seen = 0;
        let chunk = walk(&buf, Some(9), |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1, "the seq-1 message is someone else's");
        assert!(chunk.done && chunk.interrupted);
        let good = GOOD_ROUTE();
        let chunk = walk(&good, Some(1), |_| Ok(())).unwrap();
        assert!(!chunk.done && !chunk.interrupted);
    }

    #[test]
    fn dump_request_layout() {
        let r = dump_request(RTM_GETROUTE, 0x01020304, AF_INET6, RTMSG_LEN);
        assert_eq!(r.len(), 28);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 28);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), RTM_GETROUTE);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301, "NLM_F_REQUEST | NLM_F_DUMP");
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 0x01020304);
        assert_eq!(r[16], AF_INET6);
        assert!(r[17..].iter().all(|b| *b == 0));
    }

    #[test]
    fn nexthop_objects_are_resolved() {
        let nh = |id: u32, attrs: Vec<(u16, Vec<u8>)>| {
            let mut a = vec![(NHA_ID, u32v(id))];
            a.extend(attrs);
            msg(RTM_NEWNEXTHOP, 2, 1, &[AF_INET, 0, 4, 0, 0, 0, 0, 0], &a)
        };
        let mut group = Vec::new();
        for id in [1u32, 2] {
            group.extend(id.to_ne_bytes());
            group.extend([1, 0, 0, 0]);
        }
        let mut buf = nh(1, vec![(NHA_GATEWAY, vec![192, 0, 2, 1])]);
        buf.extend(nh(2, vec![(NHA_GATEWAY, v6("2001:db8::1"))]));
        buf.extend(nh(3, vec![(NHA_GROUP, group)]));
        let mut nexthops = HashMap::new();
        walk(&buf, None, |m| {
            if let Some((id, n)) = parse_nexthop(m.payload)? {
                nexthops.insert(id, n);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(nexthops.len(), 3);

        let route = |id: u32| {
            let b = msg(RTM_NEWROUTE, 2, 1, &rtmsg(AF_INET, 0, 254), &[(RTA_NH_ID, u32v(id))]);
            let mut out = Vec::new();
            walk(&b, None, |m| {
                out.extend(parse_route(m.payload)?);
                Ok(())
            })
            .unwrap();
            out
        };
        let single = resolve_nexthops(route(1), &nexthops).unwrap();
        assert_eq!(single[0].gateways, vec![ip("192.0.2.1")]);
        let grp = resolve_nexthops(route(3), &nexthops).unwrap();
        assert_eq!(grp[0].gateways, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
        // An unknown id fails closed instead of reading as "no gateway".
        assert!(resolve_nexthops(route(99), &nexthops).is_err());
        // A bad group length is an error.
        let badgrp = nh(4, vec![(NHA_GROUP, vec![1, 0, 0])]);
        assert!(walk(&badgrp, None, |m| parse_nexthop(m.payload).map(|_| ())).is_err());
    }
}
