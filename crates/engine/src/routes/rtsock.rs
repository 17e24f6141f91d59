//! FreeBSD routing-socket (`PF_ROUTE`) messages, pure: bytes in, [`RtMsg`]s out, and the
//! one request the engine sends. No I/O, no `unsafe`; tested on Linux with byte-exact
//! messages built from FreeBSD 14's headers, and fuzzed. The socket itself is `socket.rs`.
//!
//! Layout (`sys/net/route.h`, amd64 and arm64, both LP64):
//! * `struct rt_msghdr` (152 bytes): `rtm_msglen` u16 @0, `rtm_version` u8 @2 (=
//!   `RTM_VERSION` 5), `rtm_type` u8 @3, `rtm_index` u16 @4, `_rtm_spare1` u16 @6,
//!   `rtm_flags` @8, `rtm_addrs` @12, `rtm_pid` @16, `rtm_seq` @20, `rtm_errno` @24,
//!   `rtm_fmask` @28 (ints), `rtm_inits` u_long @32, `struct rt_metrics rtm_rmx` @40
//!   (14 u_long: 112 bytes). There is no FIB field: a routing socket sees and asks the FIB
//!   it was opened in (`SO_SETFIB`, default 0, the main table).
//! * Then one sockaddr per bit of `rtm_addrs`, in bit order (`RTA_DST`, `RTA_GATEWAY`,
//!   `RTA_NETMASK`, `RTA_GENMASK`, `RTA_IFP`, `RTA_IFA`, `RTA_AUTHOR`, `RTA_BRD`), each
//!   taking `SA_SIZE(sa)` bytes: `sa_len` rounded up to a multiple of `sizeof(long)`, and
//!   `sizeof(long)` for `sa_len == 0` (an all-zero netmask may come that way).
//! * `sockaddr_in` is 16 bytes (address @4), `sockaddr_in6` 28 (address @8), FreeBSD's
//!   `AF_INET6` is 28 and `AF_LINK` 18 (`sockaddr_dl`, interface index @2).
//!
//! Messages of other shapes (`RTM_NEWADDR`, `RTM_IFINFO`, ...) share only the first four
//! bytes (length, version, type) and are skipped by their length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use core::mem::{offset_of, size_of};

/// `RTM_VERSION`.
pub const RTM_VERSION: u8 = 5;
pub const RTM_ADD: u8 = 0x1;
pub const RTM_DELETE: u8 = 0x2;
pub const RTM_CHANGE: u8 = 0x3;
pub const RTM_GET: u8 = 0x4;
/// `RTM_RESOLVE`: the last type laid out as `struct rt_msghdr` (0x9 and 0xa are unused).
const RTM_LAST_RT: u8 = 0xb;

pub const RTA_DST: i32 = 0x1;
pub const RTA_GATEWAY: i32 = 0x2;
pub const RTA_NETMASK: i32 = 0x4;
/// Sockaddrs a message can carry (`RTAX_MAX`).
const RTAX_MAX: usize = 8;
const RTAX_DST: usize = 0;
const RTAX_GATEWAY: usize = 1;
const RTAX_NETMASK: usize = 2;

pub const RTF_UP: i32 = 0x1;
pub const RTF_GATEWAY: i32 = 0x2;
pub const RTF_HOST: i32 = 0x4;

pub const AF_INET: u8 = 2;
pub const AF_LINK: u8 = 18;
/// FreeBSD's value (Linux's is 10).
pub const AF_INET6: u8 = 28;
/// FreeBSD `ESRCH`: `RTM_GET` found no such route (or no path via the given gateway).
pub const ESRCH: i32 = 3;

/// `sizeof(long)` on FreeBSD's 64-bit platforms: sockaddrs are padded to it.
const LONG: usize = 8;

/// `struct rt_metrics` (14 `u_long`), for the layout assertions.
#[repr(C)]
#[allow(dead_code)]
struct RtMetrics {
    rmx_locks: u64,
    rmx_mtu: u64,
    rmx_hopcount: u64,
    rmx_expire: u64,
    rmx_recvpipe: u64,
    rmx_sendpipe: u64,
    rmx_ssthresh: u64,
    rmx_rtt: u64,
    rmx_rttvar: u64,
    rmx_pksent: u64,
    rmx_weight: u64,
    rmx_nhidx: u64,
    rmx_filler: [u64; 2],
}

/// `struct rt_msghdr`, for the layout assertions (bytes are read at these offsets).
#[repr(C)]
#[allow(dead_code)]
struct RtMsghdr {
    rtm_msglen: u16,
    rtm_version: u8,
    rtm_type: u8,
    rtm_index: u16,
    rtm_spare1: u16,
    rtm_flags: i32,
    rtm_addrs: i32,
    rtm_pid: i32,
    rtm_seq: i32,
    rtm_errno: i32,
    rtm_fmask: i32,
    rtm_inits: u64,
    rtm_rmx: RtMetrics,
}

/// `struct sockaddr_in`.
#[repr(C)]
#[allow(dead_code)]
struct SockaddrIn {
    sin_len: u8,
    sin_family: u8,
    sin_port: u16,
    sin_addr: [u8; 4],
    sin_zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
#[allow(dead_code)]
struct SockaddrIn6 {
    sin6_len: u8,
    sin6_family: u8,
    sin6_port: u16,
    sin6_flowinfo: u32,
    sin6_addr: [u8; 16],
    sin6_scope_id: u32,
}

const OFF_MSGLEN: usize = offset_of!(RtMsghdr, rtm_msglen);
const OFF_VERSION: usize = offset_of!(RtMsghdr, rtm_version);
const OFF_TYPE: usize = offset_of!(RtMsghdr, rtm_type);
const OFF_INDEX: usize = offset_of!(RtMsghdr, rtm_index);
const OFF_FLAGS: usize = offset_of!(RtMsghdr, rtm_flags);
const OFF_ADDRS: usize = offset_of!(RtMsghdr, rtm_addrs);
const OFF_PID: usize = offset_of!(RtMsghdr, rtm_pid);
const OFF_SEQ: usize = offset_of!(RtMsghdr, rtm_seq);
const OFF_ERRNO: usize = offset_of!(RtMsghdr, rtm_errno);
/// `sizeof(struct rt_msghdr)`: where the sockaddrs start.
pub const RT_MSGHDR_LEN: usize = size_of::<RtMsghdr>();
const SIN_LEN: usize = size_of::<SockaddrIn>();
const SIN6_LEN: usize = size_of::<SockaddrIn6>();
const SIN_ADDR: usize = offset_of!(SockaddrIn, sin_addr);
const SIN6_ADDR: usize = offset_of!(SockaddrIn6, sin6_addr);
/// `sin_len` and `sin6_len` as the kernel writes them.
const SIN_LEN_U8: u8 = 16;
const SIN6_LEN_U8: u8 = 28;
/// `sdl_index` in `struct sockaddr_dl`.
const SDL_INDEX: usize = 2;

// Pinned to the figures of FreeBSD 14's headers on amd64: a change here is a change of ABI.
const _: () = {
    assert!(size_of::<RtMetrics>() == 112);
    assert!(offset_of!(RtMetrics, rmx_weight) == 80);
    assert!(offset_of!(RtMetrics, rmx_nhidx) == 88);
    assert!(RT_MSGHDR_LEN == 152);
    assert!(OFF_MSGLEN == 0);
    assert!(OFF_VERSION == 2);
    assert!(OFF_TYPE == 3);
    assert!(OFF_INDEX == 4);
    assert!(offset_of!(RtMsghdr, rtm_spare1) == 6);
    assert!(OFF_FLAGS == 8);
    assert!(OFF_ADDRS == 12);
    assert!(OFF_PID == 16);
    assert!(OFF_SEQ == 20);
    assert!(OFF_ERRNO == 24);
    assert!(offset_of!(RtMsghdr, rtm_fmask) == 28);
    assert!(offset_of!(RtMsghdr, rtm_inits) == 32);
    assert!(offset_of!(RtMsghdr, rtm_rmx) == 40);
    assert!(SIN_LEN == 16);
    assert!(SIN_ADDR == 4);
    assert!(SIN6_LEN == 28);
    assert!(SIN6_ADDR == 8);
    assert!(SIN_LEN == SIN_LEN_U8 as usize);
    assert!(SIN6_LEN == SIN6_LEN_U8 as usize);
    assert!(sa_size(0) == 8 && sa_size(16) == 16 && sa_size(28) == 32 && sa_size(54) == 56);
};

/// `SA_SIZE`: the bytes a sockaddr of `sa_len` takes in a routing message.
pub const fn sa_size(sa_len: u8) -> usize {
    if sa_len == 0 { LONG } else { 1 + ((sa_len as usize - 1) | (LONG - 1)) }
}

/// A routing message that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtsockError {
    #[error("routing message truncated: {0}")]
    Truncated(String),
    #[error("routing message version {0}, expected {RTM_VERSION}")]
    Version(u8),
    #[error("routing message: {0}")]
    Invalid(String),
}

/// A route's next hop as the message names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    Ip(IpAddr),
    /// An interface (`sockaddr_dl`, by index): a directly connected route.
    Link(u16),
    /// Another address family.
    Other(u8),
}

/// One route message (`struct rt_msghdr` and the sockaddrs this module reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtMsg {
    pub msg_type: u8,
    pub index: u16,
    pub flags: i32,
    pub pid: i32,
    pub seq: i32,
    pub errno: i32,
    pub dst: Option<IpAddr>,
    pub gateway: Option<Gateway>,
    /// Prefix length of `RTA_NETMASK`, when present.
    pub prefix_len: Option<u8>,
}

impl RtMsg {
    /// A default route: destination 0.0.0.0 or ::, netmask /0 (or absent on a network
    /// route).
    pub fn is_default(&self) -> bool {
        self.dst.is_some_and(|d| d.is_unspecified())
            && self.flags & RTF_HOST == 0
            && self.prefix_len.is_none_or(|p| p == 0)
    }

    /// An added, deleted or changed default route: the engine asks again.
    pub fn is_default_change(&self) -> bool {
        matches!(self.msg_type, RTM_ADD | RTM_DELETE | RTM_CHANGE) && self.is_default()
    }
}

/// One message of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Route(RtMsg),
    /// A message of another shape (addresses, interfaces), skipped.
    Other {
        msg_type: u8,
    },
}

fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn ne_i32(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The messages in `buf` one by one, each cut to its `rtm_msglen` and of our
/// `RTM_VERSION`; after the first error, nothing more.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<&[u8], RtsockError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let at_hand = buf.len();
        if at_hand < 4 {
            buf = &[];
            return Some(Err(RtsockError::Truncated(format!("{at_hand} bytes left over"))));
        }
        let len = usize::from(ne_u16(buf, OFF_MSGLEN));
        if len < 4 || len > at_hand {
            buf = &[];
            return Some(Err(RtsockError::Truncated(format!(
                "rtm_msglen {len} with {at_hand} bytes at hand"
            ))));
        }
        let (msg, rest) = buf.split_at(len);
        buf = rest;
        if msg[OFF_VERSION] != RTM_VERSION {
            buf = &[];
            return Some(Err(RtsockError::Version(msg[OFF_VERSION])));
        }
        Some(Ok(msg))
    })
}

/// The sockaddrs present in `msg` from byte `at` on, as its `rtm_addrs` bit mask `addrs`
/// says, in `RTAX_*` order: each its index and the bytes it claims itself (its padding to
/// `SA_SIZE` is not part of it); after the first error, nothing more.
fn sockaddrs(
    msg: &[u8],
    mut at: usize,
    addrs: i32,
) -> impl Iterator<Item = Result<(usize, &[u8]), RtsockError>> {
    let mut present = (0..RTAX_MAX).filter(move |&i| addrs & (1 << i) != 0);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let i = present.next()?;
        let Some(&sa_len) = msg.get(at) else {
            failed = true;
            return Some(Err(RtsockError::Truncated(format!("sockaddr {i} missing at byte {at}"))));
        };
        let size = sa_size(sa_len);
        let Some(sa) = msg.get(at..at + size) else {
            failed = true;
            return Some(Err(RtsockError::Truncated(format!(
                "sockaddr {i} of {size} bytes runs past the message ({} bytes)",
                msg.len()
            ))));
        };
        at += size;
        Some(Ok((i, &sa[..usize::from(sa_len).min(size)])))
    })
}

/// Every message in `buf` (a `read` of a routing socket brings one; a sysctl dump many).
pub fn parse(buf: &[u8]) -> Result<Vec<Message>, RtsockError> {
    let mut out = Vec::new();
    for msg in messages(buf) {
        let msg = msg?;
        let msg_type = msg[OFF_TYPE];
        if msg_type == 0 || msg_type > RTM_LAST_RT {
            out.push(Message::Other { msg_type });
            continue;
        }
        out.push(Message::Route(parse_route(msg)?));
    }
    Ok(out)
}

fn parse_route(msg: &[u8]) -> Result<RtMsg, RtsockError> {
    if msg.len() < RT_MSGHDR_LEN {
        return Err(RtsockError::Truncated(format!(
            "a route message of {} bytes, the header alone is {RT_MSGHDR_LEN}",
            msg.len()
        )));
    }
    let addrs = ne_i32(msg, OFF_ADDRS);
    let mut m = RtMsg {
        msg_type: msg[OFF_TYPE],
        index: ne_u16(msg, OFF_INDEX),
        flags: ne_i32(msg, OFF_FLAGS),
        pid: ne_i32(msg, OFF_PID),
        seq: ne_i32(msg, OFF_SEQ),
        errno: ne_i32(msg, OFF_ERRNO),
        dst: None,
        gateway: None,
        prefix_len: None,
    };
    let mut netmask: Option<&[u8]> = None;
    for sa in sockaddrs(msg, RT_MSGHDR_LEN, addrs) {
        match sa? {
            (RTAX_DST, sa) => m.dst = sockaddr_ip(sa)?,
            (RTAX_GATEWAY, sa) => m.gateway = Some(gateway(sa)?),
            (RTAX_NETMASK, sa) => netmask = Some(sa),
            _ => {}
        }
    }
    if let Some(mask) = netmask {
        m.prefix_len = Some(prefix_len(mask, m.dst)?);
    }
    Ok(m)
}

fn family(sa: &[u8]) -> u8 {
    sa.get(1).copied().unwrap_or(0)
}

/// An IPv4 or IPv6 sockaddr's address; `None` for another family.
fn sockaddr_ip(sa: &[u8]) -> Result<Option<IpAddr>, RtsockError> {
    match family(sa) {
        AF_INET => match sa.get(SIN_ADDR..SIN_ADDR + 4) {
            Some(a) => Ok(Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))),
            None => Err(RtsockError::Invalid(format!("sockaddr_in of {} bytes", sa.len()))),
        },
        AF_INET6 => {
            match sa.get(SIN6_ADDR..SIN6_ADDR + 16).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
                Some(a) => Ok(Some(IpAddr::V6(Ipv6Addr::from(a)))),
                None => Err(RtsockError::Invalid(format!("sockaddr_in6 of {} bytes", sa.len()))),
            }
        }
        _ => Ok(None),
    }
}

fn gateway(sa: &[u8]) -> Result<Gateway, RtsockError> {
    match family(sa) {
        AF_INET | AF_INET6 => match sockaddr_ip(sa)? {
            Some(ip) => Ok(Gateway::Ip(ip)),
            None => Err(RtsockError::Invalid("gateway without an address".into())),
        },
        AF_LINK => match sa.get(SDL_INDEX..SDL_INDEX + 2) {
            Some(i) => Ok(Gateway::Link(u16::from_ne_bytes([i[0], i[1]]))),
            None => Err(RtsockError::Invalid(format!("sockaddr_dl of {} bytes", sa.len()))),
        },
        f => Ok(Gateway::Other(f)),
    }
}

/// A netmask's prefix length. The kernel may shorten a mask to its last non-zero byte (and
/// to nothing, `sa_len` 0, for /0) and leave its family unset: bytes it left out are zero,
/// and where the address sits is the destination's family's.
fn prefix_len(mask: &[u8], dst: Option<IpAddr>) -> Result<u8, RtsockError> {
    let (start, width) = match dst {
        Some(IpAddr::V6(_)) => (SIN6_ADDR, 16),
        _ => (SIN_ADDR, 4),
    };
    let mut bits = 0u8;
    let mut ended = false;
    for i in 0..width {
        let byte = mask.get(start + i).copied().unwrap_or(0);
        if ended {
            if byte != 0 {
                return Err(RtsockError::Invalid("netmask is not contiguous".into()));
            }
            continue;
        }
        // Ones, then zeros only.
        let ones = byte.leading_ones();
        if byte.count_ones() != ones {
            return Err(RtsockError::Invalid("netmask is not contiguous".into()));
        }
        bits += u8::try_from(ones).unwrap_or(0);
        ended = ones < 8;
    }
    Ok(bits)
}

fn put_sockaddr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            let mut sa = [0u8; SIN_LEN];
            sa[0] = SIN_LEN_U8;
            sa[1] = AF_INET;
            sa[SIN_ADDR..SIN_ADDR + 4].copy_from_slice(&a.octets());
            out.extend_from_slice(&sa);
        }
        IpAddr::V6(a) => {
            let mut sa = [0u8; sa_size(SIN6_LEN_U8)];
            sa[0] = SIN6_LEN_U8;
            sa[1] = AF_INET6;
            sa[SIN6_ADDR..SIN6_ADDR + 16].copy_from_slice(&a.octets());
            out.extend_from_slice(&sa);
        }
    }
}

/// `RTM_NEWADDR`: an address was added to an interface (`struct ifa_msghdr`).
pub const RTM_NEWADDR: u8 = 0xc;
/// `RTM_DELADDR`: an address was removed.
pub const RTM_DELADDR: u8 = 0xd;
/// `RTAX_IFP`: the interface's link-level sockaddr (`sockaddr_dl`, with its name).
const RTAX_IFP: usize = 4;
/// `RTAX_IFA`: the interface address itself.
const RTAX_IFA: usize = 5;

/// `struct ifa_msghdr` (`sys/net/if.h`), for the layout assertions.
#[repr(C)]
#[allow(dead_code)]
struct IfaMsghdr {
    ifam_msglen: u16,
    ifam_version: u8,
    ifam_type: u8,
    ifam_addrs: i32,
    ifam_flags: i32,
    ifam_index: u16,
    ifam_metric: i32,
}

const IFAM_ADDRS: usize = offset_of!(IfaMsghdr, ifam_addrs);
const IFAM_INDEX: usize = offset_of!(IfaMsghdr, ifam_index);
/// `sizeof(struct ifa_msghdr)`: where its sockaddrs start.
pub const IFA_MSGHDR_LEN: usize = size_of::<IfaMsghdr>();
/// `sdl_nlen` and `sdl_data` in `struct sockaddr_dl`.
const SDL_NLEN: usize = 5;
const SDL_DATA: usize = 8;

const _: () = {
    assert!(IFA_MSGHDR_LEN == 20);
    assert!(IFAM_ADDRS == 4);
    assert!(offset_of!(IfaMsghdr, ifam_flags) == 8);
    assert!(IFAM_INDEX == 12);
    assert!(offset_of!(IfaMsghdr, ifam_metric) == 16);
};

/// The address changes in `buf` (`RTM_NEWADDR`/`RTM_DELADDR`; every other message is
/// skipped), for `nat_addr = "interface"` on FreeBSD: the interface address (`RTA_IFA`) of
/// IPv4 and IPv6, IPv6 link-local ones left out (never a NAT address), with the interface's
/// name from `RTA_IFP` when the kernel includes it. Pure; what the routing socket's reader
/// gives the address book (`routes::addrs`).
pub fn parse_addresses(buf: &[u8]) -> Result<Vec<crate::routes::addrs::AddrMsg>, RtsockError> {
    use crate::routes::addrs::AddrMsg;
    let mut out = Vec::new();
    for msg in messages(buf) {
        let msg = msg?;
        let kind = msg[OFF_TYPE];
        if kind != RTM_NEWADDR && kind != RTM_DELADDR {
            continue;
        }
        if msg.len() < IFA_MSGHDR_LEN {
            return Err(RtsockError::Truncated(format!(
                "an address message of {} bytes, the header alone is {IFA_MSGHDR_LEN}",
                msg.len()
            )));
        }
        let addrs = ne_i32(msg, IFAM_ADDRS);
        let ifindex = u32::from(ne_u16(msg, IFAM_INDEX));
        let (mut address, mut name) = (None, None);
        for sa in sockaddrs(msg, IFA_MSGHDR_LEN, addrs) {
            match sa? {
                (RTAX_IFA, sa) => address = sockaddr_ip(sa)?,
                (RTAX_IFP, sa) if family(sa) == AF_LINK => name = link_name(sa)?,
                _ => {}
            }
        }
        let Some(address) = address else { continue };
        if let IpAddr::V6(a) = address
            && a.segments()[0] & 0xffc0 == 0xfe80
        {
            continue;
        }
        out.push(if kind == RTM_NEWADDR {
            AddrMsg::Added { ifindex, label: name, address }
        } else {
            AddrMsg::Removed { ifindex, address }
        });
    }
    Ok(out)
}

/// The interface name of a `sockaddr_dl` (`sdl_nlen` bytes of `sdl_data`), if it has one.
fn link_name(sa: &[u8]) -> Result<Option<String>, RtsockError> {
    let n = usize::from(sa.get(SDL_NLEN).copied().unwrap_or(0));
    if n == 0 {
        return Ok(None);
    }
    let Some(bytes) = sa.get(SDL_DATA..SDL_DATA + n) else {
        return Err(RtsockError::Invalid(format!("sockaddr_dl name of {n} bytes runs past it")));
    };
    if n > 15 {
        return Err(RtsockError::Invalid(format!("an interface name of {n} bytes")));
    }
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| RtsockError::Invalid("interface name not UTF-8".into()))
}

/// `RTM_GET` of the default route of `gw`'s family via `gw`, exact match (`RTA_NETMASK` /0),
/// as `route -n get -net default GW` asks: on a multipath default the kernel picks the
/// path through `gw` (`select_nhop`) and answers `ESRCH` when none goes there; on a
/// single-path one it answers that path, whatever its gateway. Read-only.
pub fn get_default_request(gw: IpAddr, seq: i32) -> Vec<u8> {
    let unspecified = match gw {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut out = vec![0u8; RT_MSGHDR_LEN];
    put_sockaddr(&mut out, unspecified); // RTA_DST
    put_sockaddr(&mut out, gw); // RTA_GATEWAY
    put_sockaddr(&mut out, unspecified); // RTA_NETMASK: all zero, /0
    let len = u16::try_from(out.len()).unwrap_or(u16::MAX);
    out[OFF_MSGLEN..OFF_MSGLEN + 2].copy_from_slice(&len.to_ne_bytes());
    out[OFF_VERSION] = RTM_VERSION;
    out[OFF_TYPE] = RTM_GET;
    out[OFF_FLAGS..OFF_FLAGS + 4].copy_from_slice(&(RTF_UP | RTF_GATEWAY).to_ne_bytes());
    out[OFF_ADDRS..OFF_ADDRS + 4]
        .copy_from_slice(&(RTA_DST | RTA_GATEWAY | RTA_NETMASK).to_ne_bytes());
    out[OFF_SEQ..OFF_SEQ + 4].copy_from_slice(&seq.to_ne_bytes());
    out
}

/// The answer to our `RTM_GET` (`seq`, sent by process `pid`), among what the socket reads.
pub fn is_reply(m: &RtMsg, seq: i32, pid: i32) -> bool {
    m.msg_type == RTM_GET && m.seq == seq && m.pid == pid
}

/// Does the answer to [`get_default_request`] for `gw` say a default route still goes
/// through `gw`? `ESRCH` (no default route, or none via `gw`) is "no"; another error is an
/// error, never "no".
pub fn default_uses(reply: &RtMsg, gw: IpAddr) -> Result<bool, RtsockError> {
    match reply.errno {
        0 => Ok(reply.is_default() && reply.gateway == Some(Gateway::Ip(gw))),
        ESRCH => Ok(false),
        e => Err(RtsockError::Invalid(format!("RTM_GET of the default route failed: errno {e}"))),
    }
}

/// Has routing moved for a batch? Every down gateway's answer says no default route uses
/// it, and every recovered one's says one does (the same decision as rtnetlink's).
pub fn moved(down: &[(IpAddr, RtMsg)], up: &[(IpAddr, RtMsg)]) -> Result<bool, RtsockError> {
    for (gw, reply) in down {
        if default_uses(reply, *gw)? {
            return Ok(false);
        }
    }
    for (gw, reply) in up {
        if !default_uses(reply, *gw)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The decoding behind the FreeBSD route socket, for the fuzz targets: not API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decode a buffer and apply every decision to each route message; must never panic.
    pub fn decode(buf: &[u8]) -> usize {
        let Ok(msgs) = super::parse(buf) else { return 0 };
        let gw = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 254));
        msgs.iter()
            .filter(|m| match m {
                super::Message::Route(r) => {
                    r.is_default_change() || super::default_uses(r, gw).unwrap_or(false)
                }
                super::Message::Other { .. } => false,
            })
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Messages built byte by byte at the offsets of FreeBSD 14's `sys/net/route.h` (an
    //! independent little encoder, not the module's), as the kernel's `rtsock_msg_buffer`
    //! lays them out.

    use super::*;

    const AF_INET_: u8 = 2;
    const AF_INET6_: u8 = 28;
    const AF_LINK_: u8 = 18;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sin(a: [u8; 4]) -> Vec<u8> {
        let mut v = vec![16, AF_INET_, 0, 0];
        v.extend_from_slice(&a);
        v.extend_from_slice(&[0; 8]);
        v
    }

    fn sin6(a: Ipv6Addr) -> Vec<u8> {
        let mut v = vec![28, AF_INET6_, 0, 0, 0, 0, 0, 0];
        v.extend_from_slice(&a.octets());
        v.extend_from_slice(&[0; 4]); // scope id
        v.extend_from_slice(&[0; 4]); // SA_SIZE(28) = 32
        v
    }

    /// `sockaddr_dl` of `igb1` (index 2): 20 bytes padded to 24.
    fn sdl(index: u16) -> Vec<u8> {
        let mut v = vec![20, AF_LINK_];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&[6 /* IFT_ETHER */, 4 /* nlen */, 0, 0]);
        v.extend_from_slice(b"igb1");
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0; 4]);
        v
    }

    /// A whole message: the 152-byte header at its literal offsets, then the sockaddrs.
    #[allow(clippy::too_many_arguments)]
    fn msg(
        kind: u8,
        flags: i32,
        addrs: i32,
        pid: i32,
        seq: i32,
        errno: i32,
        sas: &[Vec<u8>],
    ) -> Vec<u8> {
        let body: Vec<u8> = sas.concat();
        let len = 152 + body.len();
        let mut h = vec![0u8; 152];
        h[0..2].copy_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
        h[2] = 5;
        h[3] = kind;
        h[4..6].copy_from_slice(&2u16.to_ne_bytes()); // rtm_index
        h[8..12].copy_from_slice(&flags.to_ne_bytes());
        h[12..16].copy_from_slice(&addrs.to_ne_bytes());
        h[16..20].copy_from_slice(&pid.to_ne_bytes());
        h[20..24].copy_from_slice(&seq.to_ne_bytes());
        h[24..28].copy_from_slice(&errno.to_ne_bytes());
        h[48..56].copy_from_slice(&1500u64.to_ne_bytes()); // rmx_mtu: rtm_rmx @40, + 8
        h.extend_from_slice(&body);
        h
    }

    /// An address message: the 20-byte `ifa_msghdr` at its literal offsets, then the
    /// sockaddrs (as `rtsock_addrmsg` sends them: RTA_NETMASK, RTA_IFP, RTA_IFA, RTA_BRD).
    fn ifa_msg(kind: u8, index: u16, addrs: i32, sas: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = sas.concat();
        let len = 20 + body.len();
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
        h[2] = 5;
        h[3] = kind;
        h[4..8].copy_from_slice(&addrs.to_ne_bytes());
        h[12..14].copy_from_slice(&index.to_ne_bytes());
        h.extend_from_slice(&body);
        h
    }

    #[test]
    fn address_messages_give_the_interface_address_and_name() {
        use crate::routes::addrs::AddrMsg;
        // RTA_NETMASK | RTA_IFP | RTA_IFA | RTA_BRD: pppoe-like, the peer in RTA_BRD.
        let nm = vec![8, AF_INET_, 0, 0, 255, 255, 255, 255];
        let new = ifa_msg(
            0xc,
            2,
            0x4 | 0x10 | 0x20 | 0x80,
            &[nm, sdl(2), sin([203, 0, 113, 77]), sin([203, 0, 113, 1])],
        );
        let gone = ifa_msg(0xd, 2, 0x20, &[sin([203, 0, 113, 70])]);
        let ll = ifa_msg(0xc, 2, 0x20, &[sin6("fe80::1".parse().unwrap())]);
        let v6 = ifa_msg(0xc, 2, 0x20, &[sin6("2001:db8:1::77".parse().unwrap())]);
        // A route message between them is skipped.
        let route = msg(0x1, UGS, DGM, 0, 0, 0, &[sin([0; 4]), sin([203, 0, 113, 1]), vec![0; 8]]);
        let all = [new, route, gone, ll, v6].concat();
        assert_eq!(
            parse_addresses(&all).unwrap(),
            [
                AddrMsg::Added {
                    ifindex: 2,
                    label: Some("igb1".into()),
                    address: v4("203.0.113.77")
                },
                AddrMsg::Removed { ifindex: 2, address: v4("203.0.113.70") },
                AddrMsg::Added {
                    ifindex: 2,
                    label: None,
                    address: "2001:db8:1::77".parse().unwrap()
                },
            ]
        );
        // Truncated: an error, never a wrong address.
        let short = ifa_msg(0xc, 2, 0x20, &[sin([203, 0, 113, 77])[..8].to_vec()]);
        assert!(parse_addresses(&short).is_err());
    }

    const DGM: i32 = 0x1 | 0x2 | 0x4; // RTA_DST | RTA_GATEWAY | RTA_NETMASK
    const UGS: i32 = 0x1 | 0x2 | 0x800; // RTF_UP | RTF_GATEWAY | RTF_STATIC

    fn route(m: &[u8]) -> RtMsg {
        match parse(m).unwrap().as_slice() {
            [Message::Route(r)] => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn golden_get_default_request() {
        let got = get_default_request(v4("198.51.100.254"), 7);
        let expect =
            msg(4, 0x1 | 0x2, DGM, 0, 7, 0, &[sin([0; 4]), sin([198, 51, 100, 254]), sin([0; 4])]);
        // The encoder above writes an interface index and an MTU the request does not carry.
        let mut expect = expect;
        expect[4..6].copy_from_slice(&[0; 2]);
        expect[48..56].copy_from_slice(&[0; 8]);
        assert_eq!(got, expect);
        assert_eq!(got.len(), 200, "152 + 3 × 16");
        let six = get_default_request("2001:db8::fe".parse().unwrap(), 8);
        assert_eq!(six.len(), 152 + 3 * 32);
        assert_eq!(&six[152..154], &[28, AF_INET6_]);
        assert_eq!(&six[184 + 8..184 + 24], &"2001:db8::fe".parse::<Ipv6Addr>().unwrap().octets());
        // Our own request reads back as the request it is.
        let r = route(&got);
        assert_eq!((r.msg_type, r.seq, r.prefix_len), (RTM_GET, 7, Some(0)));
        assert!(r.is_default());
        assert_eq!(r.gateway, Some(Gateway::Ip(v4("198.51.100.254"))));
    }

    /// The kernel's answer to `RTM_GET`: DST, GATEWAY, NETMASK, IFP (sockaddr_dl), IFA.
    fn get_reply(gw: [u8; 4], errno: i32) -> Vec<u8> {
        let ifp_ifa = 0x10 | 0x20;
        msg(
            4,
            UGS | 0x40, // RTF_DONE
            DGM | ifp_ifa,
            4242,
            9,
            errno,
            &[sin([0; 4]), sin(gw), sin([0; 4]), sdl(2), sin([198, 51, 100, 1])],
        )
    }

    #[test]
    fn a_get_reply_says_whether_the_default_route_uses_the_gateway() {
        let r = route(&get_reply([198, 51, 100, 254], 0));
        assert!(is_reply(&r, 9, 4242));
        assert!(!is_reply(&r, 10, 4242) && !is_reply(&r, 9, 1));
        assert_eq!(r.index, 2);
        assert!(default_uses(&r, v4("198.51.100.254")).unwrap());
        assert!(!default_uses(&r, v4("203.0.113.254")).unwrap());
        // ESRCH: no default route (or, multipath, none via that gateway).
        let gone = route(&get_reply([0; 4], ESRCH));
        assert!(!default_uses(&gone, v4("198.51.100.254")).unwrap());
        // Any other failure is an error, never "moved".
        let eperm = route(&get_reply([198, 51, 100, 254], 1));
        assert!(default_uses(&eperm, v4("198.51.100.254")).is_err());
    }

    #[test]
    fn the_decision_is_rtnetlinks_down_gone_and_up_used() {
        let wan1 = v4("198.51.100.254");
        let wan2 = v4("203.0.113.254");
        let via1 = route(&get_reply([198, 51, 100, 254], 0));
        let via2 = route(&get_reply([203, 0, 113, 254], 0));
        let none = route(&get_reply([0; 4], ESRCH));
        // WAN1 down: not moved while the default still goes via WAN1.
        assert!(!moved(&[(wan1, via1.clone())], &[]).unwrap());
        assert!(moved(&[(wan1, via2.clone())], &[]).unwrap());
        assert!(moved(&[(wan1, none.clone())], &[]).unwrap());
        // WAN1 back: moved once the default uses it again.
        assert!(!moved(&[], &[(wan1, via2.clone())]).unwrap());
        assert!(moved(&[], &[(wan1, via1.clone())]).unwrap());
        // Both together: every condition must hold.
        assert!(!moved(&[(wan2, via2.clone())], &[(wan1, via1.clone())]).unwrap());
        assert!(moved(&[(wan2, via1.clone())], &[(wan1, via1)]).unwrap());
    }

    #[test]
    fn notifications_of_default_route_changes_are_told_apart() {
        let del = route(&msg(
            2,
            UGS,
            DGM,
            1,
            0,
            0,
            &[sin([0; 4]), sin([198, 51, 100, 254]), sin([0; 4])],
        ));
        assert!(del.is_default_change());
        let add =
            route(&msg(1, UGS, DGM, 1, 0, 0, &[sin([0; 4]), sin([203, 0, 113, 254]), sin([0; 4])]));
        assert!(add.is_default_change());
        // A /24 is not a default route.
        let net = route(&msg(
            1,
            UGS,
            DGM,
            1,
            0,
            0,
            &[sin([203, 0, 113, 0]), sin([203, 0, 113, 254]), sin([255, 255, 255, 0])],
        ));
        assert_eq!(net.prefix_len, Some(24));
        assert!(!net.is_default_change());
        // A host route to 0.0.0.0 is not a default route either.
        let host =
            route(&msg(1, UGS | 0x4, 0x1 | 0x2, 1, 0, 0, &[sin([0; 4]), sin([198, 51, 100, 254])]));
        assert!(!host.is_default());
        // An RTM_GET answer is not a change.
        assert!(!route(&get_reply([198, 51, 100, 254], 0)).is_default_change());
        // IPv6 default via a link-local-free global next hop.
        let six = route(&msg(
            2,
            UGS,
            DGM,
            1,
            0,
            0,
            &[
                sin6(Ipv6Addr::UNSPECIFIED),
                sin6("2001:db8::fe".parse().unwrap()),
                sin6(Ipv6Addr::UNSPECIFIED),
            ],
        ));
        assert!(six.is_default_change());
        assert_eq!(six.gateway, Some(Gateway::Ip("2001:db8::fe".parse().unwrap())));
    }

    #[test]
    fn short_and_empty_netmasks_are_what_the_kernel_means() {
        // sa_len 0: SA_SIZE is sizeof(long), and the mask is /0.
        let zero_len = [0u8; 8].to_vec();
        let m =
            route(&msg(2, UGS, DGM, 1, 0, 0, &[sin([0; 4]), sin([198, 51, 100, 254]), zero_len]));
        assert_eq!(m.prefix_len, Some(0));
        assert!(m.is_default_change());
        // A mask shortened to its last non-zero byte, family unset: 255.255.0.0 in 6 bytes.
        let short = vec![6, 0, 0, 0, 255, 255, 0, 0];
        let m = route(&msg(
            1,
            UGS,
            DGM,
            1,
            0,
            0,
            &[sin([198, 18, 0, 0]), sin([198, 51, 100, 254]), short],
        ));
        assert_eq!(m.prefix_len, Some(16));
        // A non-contiguous mask is refused.
        let holes = sin([255, 0, 255, 0]);
        assert!(
            parse(&msg(
                1,
                UGS,
                DGM,
                1,
                0,
                0,
                &[sin([198, 18, 0, 0]), sin([198, 51, 100, 254]), holes]
            ))
            .is_err()
        );
    }

    #[test]
    fn several_messages_and_other_shapes_in_one_buffer() {
        // An RTM_IFINFO (if_msghdr, another layout) between two route messages.
        let mut ifinfo = vec![0u8; 168];
        ifinfo[0..2].copy_from_slice(&168u16.to_ne_bytes());
        ifinfo[2] = 5;
        ifinfo[3] = 0xe;
        let mut buf = get_reply([198, 51, 100, 254], 0);
        buf.extend_from_slice(&ifinfo);
        buf.extend_from_slice(&get_reply([203, 0, 113, 254], 0));
        let msgs = parse(&buf).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1], Message::Other { msg_type: 0xe });
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let good = get_reply([198, 51, 100, 254], 0);
        // Truncated anywhere.
        for cut in 1..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A length that claims less than the header of a route message.
        let mut short = good.clone();
        short[0..2].copy_from_slice(&100u16.to_ne_bytes());
        assert!(parse(&short).is_err());
        // A length under 4.
        let mut tiny = good.clone();
        tiny[0..2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(parse(&tiny).is_err());
        // Another version.
        let mut v4_ = good.clone();
        v4_[2] = 4;
        assert_eq!(parse(&v4_), Err(RtsockError::Version(4)));
        // A sockaddr running past the message: rtm_addrs claims a sockaddr that is not there.
        let mut more = good.clone();
        more[12..16].copy_from_slice(&(0xff_i32).to_ne_bytes());
        assert!(parse(&more).is_err());
        // A sockaddr_in too short for its address.
        let bad_sin = vec![4, AF_INET_, 0, 0, 0, 0, 0, 0];
        assert!(parse(&msg(2, UGS, 0x1, 1, 0, 0, &[bad_sin])).is_err());
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)] // a bit mixer's bytes
    fn arbitrary_bytes_never_panic() {
        // A deterministic walk over mutations of a real message and random buffers.
        let good = get_reply([198, 51, 100, 254], 0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = good.clone();
            let at = (x as usize) % m.len();
            m[at] = (x >> 32) as u8;
            let _ = fuzzing::decode(&m);
            let len = (x >> 40) as usize % 400;
            let random: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            let _ = fuzzing::decode(&random);
        }
    }
}
