//! The backend-neutral data model: addresses, prefixes, selectors, state keys, handles and
//! records.
//!
//! Every type here is plain data that travels on the wire. Values decoded from a peer are
//! untrusted until checked: [`Selector::check`] and friends (in `check.rs`) turn them into
//! validated forms, and every method here is total (no panics) even on unchecked values.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;

/// Longest interface name the kernels accept (`IFNAMSIZ` - 1 on Linux and FreeBSD).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest pf rule label (`PF_RULE_LABEL_SIZE` - 1).
pub const MAX_LABEL_LEN: usize = 63;

/// IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    /// Address length in bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::Ipv4 => 32,
            Self::Ipv6 => 128,
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        })
    }
}

impl FromStr for AddressFamily {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        match s.to_ascii_lowercase().as_str() {
            "4" | "ipv4" | "inet" => Ok(Self::Ipv4),
            "6" | "ipv6" | "inet6" => Ok(Self::Ipv6),
            _ => Err(ProtoError::parse(
                "address family",
                s,
                "expected 4 or 6 (also spelt ipv4 or inet, ipv6 or inet6)",
            )),
        }
    }
}

/// An address prefix such as `198.51.100.0/24` or `2001:db8::/32`.
///
/// A prefix is valid when `len` fits the family and no host bits are set; that is checked by
/// [`Prefix::check`] (and by parsing), not by decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// A host prefix (/32 or /128) for one address.
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: AddressFamily::of(&addr).bits() }
    }

    pub fn family(&self) -> AddressFamily {
        AddressFamily::of(&self.addr)
    }

    /// True for /32 and /128.
    pub fn is_host(&self) -> bool {
        self.len == self.family().bits()
    }

    /// Whether `addr` lies inside this prefix. Addresses of the other family never match.
    /// Total on unchecked values: an over-long `len` is treated as a host prefix.
    pub fn contains(&self, addr: &IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = mask_v4(self.len);
                u32::from(net) & mask == u32::from(*a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = mask_v6(self.len);
                u128::from(net) & mask == u128::from(*a) & mask
            }
            _ => false,
        }
    }

    /// The prefix with host bits cleared (used to suggest a fix in error messages).
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_v4(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_v6(self.len)).into()),
        };
        Self { addr, len: self.len.min(self.family().bits()) }
    }
}

fn mask_v4(len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => u32::MAX,
        l => u32::MAX << (32 - u32::from(l)),
    }
}

fn mask_v6(len: u8) -> u128 {
    match len {
        0 => 0,
        l if l >= 128 => u128::MAX,
        l => u128::MAX << (128 - u32::from(l)),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = ProtoError;
    /// `ADDR` (a host prefix) or `ADDR/LEN`; host bits must be clear.
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            ProtoError::parse(
                "prefix",
                s,
                format!("{} is not an IP address", crate::text::clip(addr_text)),
            )
        })?;
        let bits = AddressFamily::of(&addr).bits();
        let len = match len_text {
            None => bits,
            Some(l) => parse_decimal::<u8>(l).ok_or_else(|| {
                let note = sign_note(l);
                ProtoError::parse(
                    "prefix",
                    s,
                    format!("length {} is not a number 0..={bits}{note}", crate::text::clip(l)),
                )
            })?,
        };
        let prefix = Prefix { addr, len };
        prefix.check().map_err(|e| ProtoError::parse("prefix", s, e.why()))?;
        Ok(prefix)
    }
}

/// A connection mark match: `(mark & mask) == value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkMatch {
    pub value: u32,
    pub mask: u32,
}

impl MarkMatch {
    pub fn matches(&self, mark: u32) -> bool {
        mark & self.mask == self.value
    }
}

impl fmt::Display for MarkMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mask == u32::MAX {
            write!(f, "{:#x}", self.value)
        } else {
            write!(f, "{:#x}/{:#x}", self.value, self.mask)
        }
    }
}

/// Digits of `radix` and nothing else: Rust's integer parsing also accepts a leading `+`,
/// which operator text must not carry (`10.0.0.0/+8`, port `+80`).
fn all_digits(text: &str, radix: u32) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_digit(radix))
}

/// An unsigned decimal number written as ASCII digits only (no sign, no space).
fn parse_decimal<T: FromStr>(text: &str) -> Option<T> {
    if all_digits(text, 10) { text.parse().ok() } else { None }
}

/// A hint appended to a "not a number" message when the text carries a sign.
fn sign_note(digits: &str) -> &'static str {
    if digits.starts_with(['+', '-']) { " (write digits only, without a sign)" } else { "" }
}

fn hex_digits(s: &str) -> Option<&str> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
}

/// Decimal digits, or `0x`/`0X` and hex digits.
fn parse_u32_any_radix(s: &str) -> Option<u32> {
    match hex_digits(s) {
        Some(hex) if all_digits(hex, 16) => u32::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => parse_decimal(s),
    }
}

/// Why `text` is not a mark number.
fn mark_why(prefix: &str, text: &str) -> String {
    let note = sign_note(hex_digits(text).unwrap_or(text));
    format!("{prefix}{} is not a 32-bit number{note}", crate::text::clip(text))
}

impl FromStr for MarkMatch {
    type Err = ProtoError;
    /// `MARK` (mask 0xffffffff) or `MARK/MASK`, decimal or 0x-hex.
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        let (v, m) = match s.split_once('/') {
            Some((v, m)) => (v, Some(m)),
            None => (s, None),
        };
        let value =
            parse_u32_any_radix(v).ok_or_else(|| ProtoError::parse("mark", s, mark_why("", v)))?;
        let mask = match m {
            None => u32::MAX,
            Some(m) => parse_u32_any_radix(m)
                .ok_or_else(|| ProtoError::parse("mark", s, mark_why("mask ", m)))?,
        };
        let mark = MarkMatch { value, mask };
        mark.check().map_err(|e| ProtoError::parse("mark", s, e.why()))?;
        Ok(mark)
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        let parse = |p: &str| {
            parse_decimal::<u16>(p).ok_or_else(|| {
                let note = sign_note(p);
                ProtoError::parse(
                    "port",
                    s,
                    format!("{} is not a port 0..=65535{note}", crate::text::clip(p)),
                )
            })
        };
        let range = match s.split_once('-') {
            Some((a, b)) => PortRange { first: parse(a)?, last: parse(b)? },
            None => PortRange::single(parse(s)?),
        };
        range.check().map_err(|e| ProtoError::parse("port range", s, e.why()))?;
        Ok(range)
    }
}

/// IP protocol numbers statecull names.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// Protocols whose states carry source and destination ports.
    pub fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | DCCP | SCTP | UDPLITE)
    }

    /// Parse `tcp`, `udp`, `icmp`, ... or a number 1..=255.
    pub fn parse(s: &str) -> Result<u8, crate::ProtoError> {
        let n = match s.to_ascii_lowercase().as_str() {
            "tcp" => TCP,
            "udp" => UDP,
            "icmp" => ICMP,
            "icmpv6" | "ipv6-icmp" | "icmp6" => ICMPV6,
            "sctp" => SCTP,
            "dccp" => DCCP,
            "gre" => GRE,
            "udplite" => UDPLITE,
            other => super::parse_decimal::<u8>(other).ok_or_else(|| {
                let note = super::sign_note(other);
                crate::ProtoError::parse(
                    "protocol",
                    s,
                    format!(
                        "expected tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number \
                         1..=255{note}"
                    ),
                )
            })?,
        };
        if n == 0 {
            return Err(crate::ProtoError::parse("protocol", s, "0 is not a transport protocol"));
        }
        Ok(n)
    }

    /// A short name for display.
    pub fn name(proto: u8) -> std::borrow::Cow<'static, str> {
        match proto {
            TCP => "tcp".into(),
            UDP => "udp".into(),
            ICMP => "icmp".into(),
            ICMPV6 => "icmpv6".into(),
            SCTP => "sctp".into(),
            DCCP => "dccp".into(),
            GRE => "gre".into(),
            UDPLITE => "udplite".into(),
            n => n.to_string().into(),
        }
    }
}

/// A network interface name (at most 15 bytes, printable, no `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfName(pub String);

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        let name = IfName(s.to_owned());
        name.check().map_err(|e| ProtoError::parse("interface name", s, e.why()))?;
        Ok(name)
    }
}

/// A pf rule label (at most 63 bytes, no NUL).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Label(pub String);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Label {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        let label = Label(s.to_owned());
        label.check().map_err(|e| ProtoError::parse("label", s, e.why()))?;
        Ok(label)
    }
}

/// Which states a request is about: the conjunction of every field that is set.
///
/// A selector must narrow the table: at least one field other than `family` (and other than
/// a /0 prefix) must be set, or [`Selector::check`] refuses it. Killing everything is the
/// separate, explicit `Flush` verb.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// Address family of the state.
    pub family: Option<AddressFamily>,
    /// IP protocol number (6 = tcp, 17 = udp, ...).
    pub proto: Option<u8>,
    /// Source prefix of the connection's initiator (conntrack: original tuple source;
    /// pf: the state's source as the kernel's kill filter sees it).
    pub src: Option<Prefix>,
    /// Destination prefix (conntrack: original tuple destination).
    pub dst: Option<Prefix>,
    pub src_port: Option<PortRange>,
    pub dst_port: Option<PortRange>,
    /// Connection mark (conntrack `ct mark`).
    pub mark: Option<MarkMatch>,
    /// The translated address replies are sent to (conntrack: reply tuple destination, i.e.
    /// the SNAT/masquerade address of a WAN).
    pub nat_addr: Option<IpAddr>,
    /// Route-to gateway of the state (pf `rt_addr`).
    pub gateway: Option<IpAddr>,
    /// Interface the state is bound to (pf).
    pub interface: Option<IfName>,
    /// Label of the rule that created the state (pf).
    pub label: Option<Label>,
}

/// The fields a selector can use, for capability lists and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorField {
    Family,
    Proto,
    Src,
    Dst,
    SrcPort,
    DstPort,
    Mark,
    NatAddr,
    Gateway,
    Interface,
    Label,
}

impl SelectorField {
    pub const ALL: [SelectorField; 11] = [
        Self::Family,
        Self::Proto,
        Self::Src,
        Self::Dst,
        Self::SrcPort,
        Self::DstPort,
        Self::Mark,
        Self::NatAddr,
        Self::Gateway,
        Self::Interface,
        Self::Label,
    ];

    /// The operator-facing name (the CLI flag without dashes).
    pub fn name(self) -> &'static str {
        match self {
            Self::Family => "family",
            Self::Proto => "proto",
            Self::Src => "src",
            Self::Dst => "dst",
            Self::SrcPort => "sport",
            Self::DstPort => "dport",
            Self::Mark => "mark",
            Self::NatAddr => "nat-addr",
            Self::Gateway => "gateway",
            Self::Interface => "interface",
            Self::Label => "label",
        }
    }
}

impl fmt::Display for SelectorField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Selector {
    /// The fields that are set, in a fixed order.
    pub fn fields(&self) -> Vec<SelectorField> {
        let mut out = Vec::new();
        let set = [
            (SelectorField::Family, self.family.is_some()),
            (SelectorField::Proto, self.proto.is_some()),
            (SelectorField::Src, self.src.is_some()),
            (SelectorField::Dst, self.dst.is_some()),
            (SelectorField::SrcPort, self.src_port.is_some()),
            (SelectorField::DstPort, self.dst_port.is_some()),
            (SelectorField::Mark, self.mark.is_some()),
            (SelectorField::NatAddr, self.nat_addr.is_some()),
            (SelectorField::Gateway, self.gateway.is_some()),
            (SelectorField::Interface, self.interface.is_some()),
            (SelectorField::Label, self.label.is_some()),
        ];
        for (field, is_set) in set {
            if is_set {
                out.push(field);
            }
        }
        out
    }

    /// The address family this selector is confined to, if any field implies one.
    /// Conflicts are reported by `check`; here the first implied family wins.
    pub fn implied_family(&self) -> Option<AddressFamily> {
        self.family
            .or(self.src.map(|p| p.family()))
            .or(self.dst.map(|p| p.family()))
            .or(self.nat_addr.as_ref().map(AddressFamily::of))
            .or(self.gateway.as_ref().map(AddressFamily::of))
    }
}

impl fmt::Display for Selector {
    /// Operator syntax, e.g. `mark 0x1/0xff proto tcp nat-addr 198.51.100.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(v) = self.family {
            parts.push(format!("family {v}"));
        }
        if let Some(v) = self.proto {
            parts.push(format!("proto {}", ipproto::name(v)));
        }
        if let Some(v) = self.src {
            parts.push(format!("src {v}"));
        }
        if let Some(v) = self.dst {
            parts.push(format!("dst {v}"));
        }
        if let Some(v) = self.src_port {
            parts.push(format!("sport {v}"));
        }
        if let Some(v) = self.dst_port {
            parts.push(format!("dport {v}"));
        }
        if let Some(v) = self.mark {
            parts.push(format!("mark {v}"));
        }
        if let Some(v) = self.nat_addr {
            parts.push(format!("nat-addr {v}"));
        }
        if let Some(v) = self.gateway {
            parts.push(format!("gateway {v}"));
        }
        if let Some(v) = &self.interface {
            parts.push(format!("interface {v}"));
        }
        if let Some(v) = &self.label {
            parts.push(format!("label {v:?}", v = v.0));
        }
        if parts.is_empty() { f.write_str("(empty)") } else { f.write_str(&parts.join(" ")) }
    }
}

/// Layer-4 identity of one direction of a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum L4 {
    /// TCP, UDP, SCTP, DCCP, UDP-Lite (and GRE keys, which conntrack stores as ports).
    Ports { src: u16, dst: u16 },
    /// ICMP / ICMPv6: echo identifier, type and code.
    Icmp { id: u16, kind: u8, code: u8 },
    /// Protocols without a layer-4 key.
    None,
}

/// One direction of a state: addresses, protocol and layer-4 identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateKey {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
}

impl StateKey {
    pub fn family(&self) -> AddressFamily {
        AddressFamily::of(&self.src)
    }
    pub fn src_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { src, .. } => Some(src),
            _ => None,
        }
    }
    pub fn dst_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { dst, .. } => Some(dst),
            _ => None,
        }
    }
}

fn fmt_endpoint(f: &mut fmt::Formatter<'_>, addr: &IpAddr, port: Option<u16>) -> fmt::Result {
    match (addr, port) {
        (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
        (a, Some(p)) => write!(f, "{a}:{p}"),
        (a, None) => write!(f, "{a}"),
    }
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", ipproto::name(self.proto))?;
        fmt_endpoint(f, &self.src, self.src_port())?;
        f.write_str(" -> ")?;
        fmt_endpoint(f, &self.dst, self.dst_port())?;
        if let L4::Icmp { id, kind, code } = self.l4 {
            write!(f, " type {kind} code {code} id {id}")?;
        }
        Ok(())
    }
}

/// A backend-specific, exact reference to one state, as returned in a snapshot and accepted
/// by `KillHandles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StateHandle {
    /// Linux conntrack: the original-direction tuple, the entry's `CTA_ID` and its zone. The
    /// kernel deletes the entry only if the tuple is found *and* the id matches, so a handle
    /// never hits a newer entry that reused the tuple.
    Conntrack { orig: StateKey, id: u32, zone: u16 },
    /// FreeBSD pf: the state id exactly as the kernel reported it (never byte-swapped) and
    /// the raw creator id (0 means this host). A kill by id is O(1) in the kernel.
    Pf { id: u64, creator_id: u32 },
}

/// Direction of a pf state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PfDirection {
    In,
    Out,
}

/// Packet and byte counters, when the backend keeps them (conntrack needs
/// `nf_conntrack_acct=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Backend-specific facts about a state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateDetail {
    /// Linux conntrack: one entry covers both directions.
    Conntrack {
        /// The reply-direction tuple; for SNAT its destination is the NAT address.
        reply: StateKey,
        mark: u32,
        zone: u16,
        /// `IPS_*` status bits.
        status: u32,
        /// TCP state (`TCP_CONNTRACK_*`) for TCP entries.
        tcp_state: Option<u8>,
    },
    /// FreeBSD pf: one state per direction and interface; a forwarded NAT connection has
    /// two (its LAN-side and WAN-side "twins").
    Pf {
        direction: PfDirection,
        /// The state's interface ("all" for floating states).
        interface: String,
        /// The interface it was created on.
        orig_interface: String,
        /// The key as seen on the wire (after NAT on outbound states), oriented from the
        /// connection's source to its destination.
        wire: StateKey,
        /// The key as seen by the stack (before NAT), oriented the same way.
        stack: StateKey,
        /// Route-to / reply-to gateway (`rt_addr`), if any.
        gateway: Option<IpAddr>,
        /// Number of the rule that created the state.
        rule: Option<u32>,
    },
}

/// What the broker reports about one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub handle: StateHandle,
    /// The connection as its initiator sent it (conntrack: original tuple).
    pub key: StateKey,
    pub detail: StateDetail,
    /// Seconds until the state expires, when known.
    pub expires_in_secs: Option<u32>,
    pub counters: Option<Counters>,
}

/// conntrack `IPS_*` status bits statecull reads.
pub mod ct_status {
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
}

impl StateRecord {
    /// True when the state was translated (SNAT/DNAT).
    pub fn is_nat(&self) -> bool {
        match &self.detail {
            StateDetail::Conntrack { status, .. } => {
                status & (ct_status::SRC_NAT | ct_status::DST_NAT) != 0
            }
            StateDetail::Pf { wire, stack, .. } => wire != stack,
        }
    }

    /// The address replies go to (conntrack: reply destination).
    /// conntrack: the reply destination; pf: the wire key's source (the address the
    /// firewall uses on the wire, i.e. the NAT address of an outbound state).
    pub fn reply_dst(&self) -> IpAddr {
        match &self.detail {
            StateDetail::Conntrack { reply, .. } => reply.dst,
            StateDetail::Pf { wire, .. } => wire.src,
        }
    }

    /// Every address the state names (both directions or keys).
    pub fn addresses(&self) -> [IpAddr; 4] {
        match &self.detail {
            StateDetail::Conntrack { reply, .. } => {
                [self.key.src, self.key.dst, reply.src, reply.dst]
            }
            StateDetail::Pf { wire, stack, .. } => [wire.src, wire.dst, stack.src, stack.dst],
        }
    }
}
