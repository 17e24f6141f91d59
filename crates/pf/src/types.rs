//! pf's state and kill-request data, as plain Rust values shared by the codecs, the model
//! and the backend. Addresses are `IpAddr`; ports are host-order numbers here and converted
//! to network order only at the wire (pf keeps them in network order everywhere).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// FreeBSD's `AF_INET`.
pub const AF_INET: u8 = 2;
/// FreeBSD's `AF_INET6` (not Linux's 10) [unverified on a real system: pf-kernel.md §1.1].
pub const AF_INET6: u8 = 28;

/// `IFNAMSIZ` on FreeBSD.
pub const IFNAMSIZ: usize = 16;
/// `PF_RULE_LABEL_SIZE`.
pub const PF_RULE_LABEL_SIZE: usize = 64;
/// `PF_RULE_MAX_LABEL_COUNT`.
pub const PF_RULE_MAX_LABEL_COUNT: usize = 5;

/// `PF_ADDR_ADDRMASK`: the only address type kill requests use.
pub const PF_ADDR_ADDRMASK: u8 = 0;

/// Port comparison operators (`PF_OP_*`).
pub mod port_op {
    pub const NONE: u8 = 0;
    /// `a >< b`: strictly between.
    pub const IRG: u8 = 1;
    pub const EQ: u8 = 2;
    pub const NE: u8 = 3;
    pub const LT: u8 = 4;
    pub const LE: u8 = 5;
    pub const GT: u8 = 6;
    pub const GE: u8 = 7;
    /// `a <> b`: outside.
    pub const XRG: u8 = 8;
    /// `a : b`: inclusive range.
    pub const RRG: u8 = 9;
    pub const MAX: u8 = RRG;
}

/// A state's direction (`PF_IN` = 1, `PF_OUT` = 2; `PF_INOUT` = 0 is only a lookup mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn wire(self) -> u8 {
        match self {
            Direction::In => 1,
            Direction::Out => 2,
        }
    }
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Direction::In),
            2 => Some(Direction::Out),
            _ => None,
        }
    }
    pub fn opposite(self) -> Self {
        match self {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        }
    }
}

/// `AF_*` of an address.
pub fn af_of(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// The unspecified address of a pf address family (`0.0.0.0` for anything but IPv6).
pub fn unspecified(af: u8) -> IpAddr {
    if af == AF_INET6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// A 16-byte `struct pf_addr` from an address (IPv4 in the first 4 bytes).
pub fn pf_addr_bytes(a: &IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => out.copy_from_slice(&v.octets()),
    }
    out
}

/// An address from a 16-byte `struct pf_addr` of family `af`.
pub fn addr_from_pf(af: u8, b: &[u8; 16]) -> IpAddr {
    if af == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
}

/// A prefix length as a 16-byte mask.
pub fn mask_bytes(af: u8, len: u8) -> [u8; 16] {
    let bits = if af == AF_INET6 { 128 } else { 32 };
    let len = usize::from(len.min(bits));
    let mut m = [0u8; 16];
    for (i, byte) in m.iter_mut().enumerate() {
        let from = i * 8;
        if len >= from + 8 {
            *byte = 0xff;
        } else if len > from {
            *byte = 0xffu8 << (8 - (len - from));
        }
    }
    m
}

/// `struct pf_state_key_cmp`: two addresses and two ports (host order here), af and proto.
/// `addr[0]`/`port[0]` is the "source" side for inbound states and the "destination" side
/// for outbound ones (pf-kernel.md §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PfKey {
    pub af: u8,
    pub proto: u8,
    pub addr: [IpAddr; 2],
    pub port: [u16; 2],
}

impl PfKey {
    /// The key with its two ends swapped (what `kill_match` looks up).
    pub fn swapped(&self) -> PfKey {
        PfKey {
            af: self.af,
            proto: self.proto,
            addr: [self.addr[1], self.addr[0]],
            port: [self.port[1], self.port[0]],
        }
    }
}

/// One state as a listing reports it (netlink `GETSTATES` or `DIOCGETSTATESV2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PfState {
    /// Raw id, exactly as the kernel gave it (big-endian inside the kernel; never swapped).
    pub id: u64,
    /// Raw creator id as the kill path compares it (netlink dumps send it byte-swapped; the
    /// codec swaps it back).
    pub creatorid: u32,
    pub direction: Direction,
    /// The state's interface ("all" for floating states).
    pub ifname: String,
    /// The interface the state was created on.
    pub orig_ifname: String,
    /// `key[PF_SK_WIRE]`: as seen on the wire (after NAT on outbound states).
    pub wire: PfKey,
    /// `key[PF_SK_STACK]`: as seen by the stack (before NAT).
    pub stack: PfKey,
    /// Route-to / reply-to gateway; `None` when the state has none (`rt_addr` 0).
    pub rt_addr: Option<IpAddr>,
    /// Number of the rule that created the state (`u32::MAX` for none).
    pub rule: u32,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Seconds since creation, and until expiry.
    pub creation: u32,
    pub expire: u32,
}

impl PfState {
    /// The interface the kill filter compares: `orig_ifname` for floating states.
    pub fn kill_ifname(&self) -> &str {
        if self.ifname == "all" { &self.orig_ifname } else { &self.ifname }
    }

    /// The wire key's ends as the kill filter sees them: (src, sport, dst, dport).
    pub fn kill_endpoints(&self) -> (IpAddr, u16, IpAddr, u16) {
        let k = &self.wire;
        match self.direction {
            Direction::Out => (k.addr[1], k.port[1], k.addr[0], k.port[0]),
            Direction::In => (k.addr[0], k.port[0], k.addr[1], k.port[1]),
        }
    }
}

/// `struct pf_rule_addr` as used by kills: address/mask (type ADDRMASK), ports, negation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleAddr {
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    /// Range bounds in host order (`port[0]`, `port[1]`).
    pub port: [u16; 2],
    pub neg: bool,
    pub port_op: u8,
}

impl RuleAddr {
    /// Matches `addr/len` (family `af`).
    pub fn prefix(addr: &IpAddr, len: u8) -> Self {
        let af = af_of(addr);
        let mask = mask_bytes(af, len);
        let mut a = pf_addr_bytes(addr);
        for (x, m) in a.iter_mut().zip(mask) {
            *x &= m;
        }
        Self { addr: a, mask, ..Self::default() }
    }

    /// True when it constrains nothing (zero mask and no port operator).
    pub fn is_any(&self) -> bool {
        self.mask == [0; 16] && !self.neg && self.port_op == port_op::NONE
    }
}

/// The kernel's `struct pf_kstate_kill`: one kill or clear request.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PfKill {
    /// Non-zero: kill exactly this state (with `creatorid`, 0 = this host); every other
    /// field is ignored by the kernel.
    pub id: u64,
    pub creatorid: u32,
    pub direction: u8,
    /// 0 = any family.
    pub af: u8,
    /// 0 = any protocol.
    pub proto: u8,
    pub src: RuleAddr,
    pub dst: RuleAddr,
    pub rt_addr: RuleAddr,
    /// Empty = any interface.
    pub ifname: String,
    /// Empty = any label.
    pub label: String,
    /// Also kill each victim's unambiguous twin in the opposite direction.
    pub kill_match: bool,
    /// Compare the stack (pre-NAT) key instead of the wire key (FreeBSD 15+).
    pub nat: bool,
}

impl PfKill {
    /// Would the kernel treat this filter as "every state"? (pf-kernel.md §10.2: refuse.)
    pub fn is_everything(&self) -> bool {
        self.id == 0
            && self.af == 0
            && self.proto == 0
            && self.src.is_any()
            && self.dst.is_any()
            && self.rt_addr.is_any()
            && self.ifname.is_empty()
            && self.label.is_empty()
    }

    /// A kill by id.
    pub fn by_id(id: u64, creatorid: u32) -> Self {
        Self { id, creatorid, ..Self::default() }
    }
}

/// Default `net.pf.states_hashsize`: the id-hash rows of the kernel's state table.
pub const DEFAULT_ROWS: usize = 131_072;

/// The twin search of `kill_match` for a victim: the key to look up and the direction.
pub fn twin_search(s: &PfState) -> (PfKey, Direction) {
    match s.direction {
        Direction::Out => (s.stack.swapped(), Direction::In),
        Direction::In => (s.wire.swapped(), Direction::Out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_bytes(AF_INET, 24)[..4], [255, 255, 255, 0]);
        assert_eq!(mask_bytes(AF_INET, 0), [0; 16]);
        assert_eq!(mask_bytes(AF_INET, 32)[4..], [0; 12]);
        assert_eq!(mask_bytes(AF_INET6, 65)[7..10], [255, 0x80, 0]);
        let r = RuleAddr::prefix(&"198.51.100.7".parse().unwrap(), 24);
        assert_eq!(r.addr[..4], [198, 51, 100, 0]);
    }

    #[test]
    fn everything_filter_is_detected() {
        assert!(PfKill::default().is_everything());
        assert!(
            PfKill { kill_match: true, ..PfKill::default() }.is_everything(),
            "kill_match alone still matches every state"
        );
        assert!(!PfKill { ifname: "em0".into(), ..PfKill::default() }.is_everything());
        assert!(!PfKill::by_id(5, 0).is_everything());
    }
}
