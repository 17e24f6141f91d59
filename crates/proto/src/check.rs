//! Checking decoded values: "check length, then meaning, then act".
//!
//! Decoding only proves that bytes have the right shape. The functions here decide whether a
//! value makes sense, and [`CheckedSelector`] can only be built by checking, so code that
//! acts on a selector cannot forget to. The broker re-runs every check even when the engine
//! already did: a compromised engine must not be able to skip them.

use std::net::IpAddr;

use crate::error::ProtoError;
use crate::model::{
    AddressFamily, IfName, L4, Label, MAX_IFNAME_LEN, MAX_LABEL_LEN, MarkMatch, PortRange, Prefix,
    Selector, SelectorField, StateHandle, StateKey, ipproto,
};
use crate::verbs::{Capabilities, Hello, Request, Verb};

/// Upper bounds a broker enforces per request. The protocol constants are the ceiling; a
/// broker may advertise lower ones in its Hello reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Largest frame payload in bytes.
    pub max_frame_len: u32,
    /// Most selectors in one `Count` or `KillMatching`.
    pub max_selectors: u32,
    /// Most handles in one `KillHandles`.
    pub max_handles: u32,
    /// Most records in one snapshot batch.
    pub max_snapshot_batch: u32,
}

impl Limits {
    /// The protocol's own ceilings.
    pub const PROTOCOL: Limits = Limits {
        max_frame_len: crate::MAX_FRAME_LEN,
        max_selectors: crate::MAX_SELECTORS,
        max_handles: crate::MAX_HANDLES,
        max_snapshot_batch: crate::MAX_SNAPSHOT_BATCH,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::PROTOCOL
    }
}

fn is_unusable_addr(addr: &IpAddr) -> bool {
    addr.is_unspecified()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(a) if a.is_broadcast())
}

impl Prefix {
    /// A valid prefix has a length that fits its family and no host bits set.
    pub fn check(&self) -> Result<(), ProtoError> {
        let bits = self.family().bits();
        if self.len > bits {
            return Err(ProtoError::invalid(
                "prefix",
                format!("{self}: length {} is longer than {bits} bits", self.len),
            ));
        }
        let network = self.network();
        if network.addr != self.addr {
            return Err(ProtoError::invalid(
                "prefix",
                format!("{self} has host bits set (did you mean {network}?)"),
            ));
        }
        Ok(())
    }
}

impl MarkMatch {
    /// A mask of 0 would match every state, and value bits outside the mask can never match.
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.mask == 0 {
            return Err(ProtoError::invalid("mark", format!("{self}: mask 0 matches every state")));
        }
        if self.value & !self.mask != 0 {
            return Err(ProtoError::invalid(
                "mark",
                format!(
                    "{:#x}/{:#x}: the value has bits outside the mask, so it can never match",
                    self.value, self.mask
                ),
            ));
        }
        Ok(())
    }
}

impl PortRange {
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.first > self.last {
            return Err(ProtoError::invalid(
                "port range",
                format!("{}-{}: the first port is above the last", self.first, self.last),
            ));
        }
        Ok(())
    }
}

impl IfName {
    pub fn check(&self) -> Result<(), ProtoError> {
        let name = &self.0;
        let why = if name.is_empty() {
            "empty name"
        } else if name.len() > MAX_IFNAME_LEN {
            "longer than 15 bytes"
        } else if name == "." || name == ".." {
            "not an interface name"
        } else if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            "only printable ASCII without spaces or '/' is allowed"
        } else {
            return Ok(());
        };
        Err(ProtoError::invalid("interface name", format!("{}: {why}", crate::text::clip(name))))
    }
}

impl Label {
    pub fn check(&self) -> Result<(), ProtoError> {
        let label = &self.0;
        let why = if label.is_empty() {
            "empty label"
        } else if label.len() > MAX_LABEL_LEN {
            "longer than 63 bytes"
        } else if label.bytes().any(|b| b == 0) {
            "contains a NUL byte"
        } else {
            return Ok(());
        };
        Err(ProtoError::invalid("label", format!("{}: {why}", crate::text::clip(label))))
    }
}

/// A selector that passed [`Selector::check`]. Backends only accept this type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckedSelector {
    selector: Selector,
    family: Option<AddressFamily>,
}

impl CheckedSelector {
    pub fn get(&self) -> &Selector {
        &self.selector
    }
    /// The family every matching state has, if the selector implies one.
    pub fn family(&self) -> Option<AddressFamily> {
        self.family
    }
    pub fn into_inner(self) -> Selector {
        self.selector
    }
}

impl std::ops::Deref for CheckedSelector {
    type Target = Selector;
    fn deref(&self) -> &Selector {
        &self.selector
    }
}

impl std::fmt::Display for CheckedSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.selector.fmt(f)
    }
}

impl Selector {
    /// Check every field and the selector as a whole.
    ///
    /// Refused: no narrowing field (family alone and /0 prefixes do not narrow), invalid
    /// prefixes, marks, port ranges, names, mixed address families, ports without a
    /// port-carrying protocol, protocol 0, and unspecified/multicast NAT or gateway addresses.
    pub fn check(&self) -> Result<CheckedSelector, ProtoError> {
        for p in [self.src, self.dst].into_iter().flatten() {
            p.check()?;
        }
        if let Some(m) = self.mark {
            m.check()?;
        }
        for r in [self.src_port, self.dst_port].into_iter().flatten() {
            r.check()?;
        }
        if let Some(i) = &self.interface {
            i.check()?;
        }
        if let Some(l) = &self.label {
            l.check()?;
        }
        if self.proto == Some(0) {
            return Err(ProtoError::invalid("protocol", "0 is not a transport protocol"));
        }
        if self.src_port.is_some() || self.dst_port.is_some() {
            match self.proto {
                Some(p) if ipproto::has_ports(p) => {}
                Some(p) => {
                    return Err(ProtoError::invalid(
                        "selector",
                        format!("protocol {} has no ports", ipproto::name(p)),
                    ));
                }
                None => {
                    return Err(ProtoError::invalid(
                        "selector",
                        "a port needs a protocol with ports (tcp, udp, sctp, dccp, udplite)",
                    ));
                }
            }
        }
        for (what, addr) in [("NAT address", self.nat_addr), ("gateway", self.gateway)] {
            if let Some(a) = addr
                && is_unusable_addr(&a)
            {
                return Err(ProtoError::invalid(
                    "selector",
                    format!("{what} {a} is not a unicast address"),
                ));
            }
        }

        // One address family for everything that names one.
        let mut family: Option<(AddressFamily, &'static str)> = self.family.map(|f| (f, "family"));
        let named = [
            ("src", self.src.map(|p| p.family())),
            ("dst", self.dst.map(|p| p.family())),
            ("nat-addr", self.nat_addr.as_ref().map(AddressFamily::of)),
            ("gateway", self.gateway.as_ref().map(AddressFamily::of)),
        ];
        for (what, fam) in named {
            let Some(fam) = fam else { continue };
            match family {
                None => family = Some((fam, what)),
                Some((f, first)) if f != fam => {
                    return Err(ProtoError::invalid(
                        "selector",
                        format!("{first} is {f} but {what} is {fam}; a state has one family"),
                    ));
                }
                Some(_) => {}
            }
        }

        let narrows = self.proto.is_some()
            || self.src.is_some_and(|p| p.len > 0)
            || self.dst.is_some_and(|p| p.len > 0)
            || self.src_port.is_some()
            || self.dst_port.is_some()
            || self.mark.is_some()
            || self.nat_addr.is_some()
            || self.gateway.is_some()
            || self.interface.is_some()
            || self.label.is_some();
        if !narrows {
            return Err(ProtoError::EmptySelector(format!(
                "\"{self}\" would match every state{}; name at least one of {}, or use flush",
                family.map(|(f, _)| format!(" of family {f}")).unwrap_or_default(),
                SelectorField::ALL
                    .iter()
                    .filter(|f| **f != SelectorField::Family)
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            )));
        }
        Ok(CheckedSelector { selector: self.clone(), family: family.map(|(f, _)| f) })
    }
}

impl StateKey {
    /// Both addresses of one family, ports only for protocols with ports, ICMP identity only
    /// for ICMP.
    pub fn check(&self) -> Result<(), ProtoError> {
        if AddressFamily::of(&self.src) != AddressFamily::of(&self.dst) {
            return Err(ProtoError::invalid(
                "state key",
                "source and destination differ in family",
            ));
        }
        if self.proto == 0 {
            return Err(ProtoError::invalid("state key", "protocol 0"));
        }
        let fits = match self.l4 {
            L4::Ports { .. } => ipproto::has_ports(self.proto) || self.proto == ipproto::GRE,
            L4::Icmp { .. } => {
                matches!(
                    (self.proto, self.family()),
                    (ipproto::ICMP, AddressFamily::Ipv4) | (ipproto::ICMPV6, AddressFamily::Ipv6)
                )
            }
            L4::None => {
                !ipproto::has_ports(self.proto)
                    && self.proto != ipproto::ICMP
                    && self.proto != ipproto::ICMPV6
            }
        };
        if !fits {
            return Err(ProtoError::invalid(
                "state key",
                format!("layer-4 identity {:?} does not fit protocol {}", self.l4, self.proto),
            ));
        }
        Ok(())
    }
}

impl StateHandle {
    pub fn check(&self) -> Result<(), ProtoError> {
        match self {
            StateHandle::Conntrack { orig, .. } => orig.check(),
            StateHandle::Pf { id, .. } => {
                if *id == 0 {
                    // Id 0 is not a state: the kernel would read the request as a filter.
                    return Err(ProtoError::invalid("state handle", "pf state id 0"));
                }
                Ok(())
            }
        }
    }
}

/// A handle that passed [`StateHandle::check`]. Backends only accept this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckedHandle(StateHandle);

impl CheckedHandle {
    pub fn get(&self) -> &StateHandle {
        &self.0
    }
}

impl std::ops::Deref for CheckedHandle {
    type Target = StateHandle;
    fn deref(&self) -> &StateHandle {
        &self.0
    }
}

/// An interface name that passed [`IfName::check`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckedIfName(IfName);

impl CheckedIfName {
    pub fn get(&self) -> &IfName {
        &self.0
    }
    pub fn as_str(&self) -> &str {
        &self.0.0
    }
}

impl std::fmt::Display for CheckedIfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a request asks of the backend that it may not offer (see [`Capabilities`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// A selector field the backend cannot match on.
    Field(SelectorField),
    /// A flush limited to one interface.
    FlushByInterface,
    /// Reading a filter ruleset's ticket (conntrack has no ruleset).
    RulesetTicket,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::Field(field) => write!(f, "selecting by {field}"),
            Unsupported::FlushByInterface => f.write_str("a flush limited to one interface"),
            Unsupported::RulesetTicket => f.write_str("reading a filter ruleset's ticket"),
        }
    }
}

impl Capabilities {
    /// Everything a request can ask for: what a client checks against before it knows
    /// which broker (and backend) it will talk to.
    pub fn any() -> Self {
        Capabilities {
            selector_fields: SelectorField::ALL.to_vec(),
            kernel_mark_flush: true,
            kernel_tuple_flush: vec![AddressFamily::Ipv4, AddressFamily::Ipv6],
            kernel_tuple_broken: Vec::new(),
            listing_only: Vec::new(),
            match_opposite: true,
            flush_by_interface: true,
            ruleset_ticket: true,
        }
    }

    fn check_fields(&self, sel: &CheckedSelector) -> Result<(), ProtoError> {
        match sel.fields().into_iter().find(|f| !self.selector_fields.contains(f)) {
            Some(field) => Err(self.unsupported(Unsupported::Field(field))),
            None => Ok(()),
        }
    }

    fn unsupported(&self, what: Unsupported) -> ProtoError {
        ProtoError::Unsupported {
            what,
            supported: self.selector_fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        }
    }
}

/// A request that passed [`Request::check`]: every value in it is a checked type, so code
/// that acts on it (the broker's dispatcher, the backends) cannot act on anything unchecked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckedRequest {
    Hello(Hello),
    Snapshot { selector: Option<CheckedSelector> },
    Count { selectors: Vec<CheckedSelector> },
    KillHandles { handles: Vec<CheckedHandle>, match_opposite: bool },
    KillMatching { selectors: Vec<CheckedSelector>, match_opposite: bool },
    Flush { interface: Option<CheckedIfName> },
    RulesetTicket,
}

impl CheckedRequest {
    pub fn verb(&self) -> Verb {
        match self {
            CheckedRequest::Hello(_) => Verb::Hello,
            CheckedRequest::Snapshot { .. } => Verb::Snapshot,
            CheckedRequest::Count { .. } => Verb::Count,
            CheckedRequest::KillHandles { .. } => Verb::KillHandles,
            CheckedRequest::KillMatching { .. } => Verb::KillMatching,
            CheckedRequest::Flush { .. } => Verb::Flush,
            CheckedRequest::RulesetTicket => Verb::RulesetTicket,
        }
    }

    /// The request's selectors, in request order (none for verbs without selectors).
    pub fn selectors(&self) -> &[CheckedSelector] {
        match self {
            CheckedRequest::Snapshot { selector } => selector.as_slice(),
            CheckedRequest::Count { selectors }
            | CheckedRequest::KillMatching { selectors, .. } => selectors,
            _ => &[],
        }
    }
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), ProtoError> {
    if count > max {
        return Err(ProtoError::TooMany { what, count, max });
    }
    Ok(())
}

impl Request {
    /// Check a request: length first (against `limits`, normally the broker's advertised
    /// ones), then meaning (every selector, handle and name), then what the backend offers
    /// (`caps`; a client that does not know its broker yet uses [`Capabilities::any`]).
    ///
    /// This is the one place that decides whether a request is acceptable; what it returns
    /// holds only checked types.
    pub fn check(self, limits: &Limits, caps: &Capabilities) -> Result<CheckedRequest, ProtoError> {
        let max_selectors = limits.max_selectors as usize;
        let selectors = |selectors: &[Selector]| -> Result<Vec<CheckedSelector>, ProtoError> {
            check_count("selectors", selectors.len(), max_selectors)?;
            let checked = selectors.iter().map(Selector::check).collect::<Result<Vec<_>, _>>()?;
            checked.iter().try_for_each(|s| caps.check_fields(s))?;
            Ok(checked)
        };
        match self {
            Request::Hello(hello) => {
                check_count(
                    "bytes in the client name",
                    hello.client.len(),
                    crate::MAX_CLIENT_NAME_LEN,
                )?;
                Ok(CheckedRequest::Hello(hello))
            }
            Request::Snapshot { selector } => {
                let selector = selector.as_ref().map(Selector::check).transpose()?;
                if let Some(s) = &selector {
                    caps.check_fields(s)?;
                }
                Ok(CheckedRequest::Snapshot { selector })
            }
            Request::Count { selectors: s } => {
                Ok(CheckedRequest::Count { selectors: selectors(&s)? })
            }
            Request::KillMatching { selectors: s, match_opposite } => {
                if s.is_empty() {
                    return Err(ProtoError::EmptySelector(
                        "KillMatching without selectors; use Flush to clear the table".into(),
                    ));
                }
                Ok(CheckedRequest::KillMatching { selectors: selectors(&s)?, match_opposite })
            }
            Request::KillHandles { handles, match_opposite } => {
                if handles.is_empty() {
                    return Err(ProtoError::invalid("request", "KillHandles without handles"));
                }
                check_count("handles", handles.len(), limits.max_handles as usize)?;
                // A twin is found from the state a handle names as listed; creator 0 ("this
                // host", as pf's kill by id reads it) names no listed state.
                if match_opposite
                    && handles.iter().any(|h| matches!(h, StateHandle::Pf { creator_id: 0, .. }))
                {
                    return Err(ProtoError::invalid(
                        "handle",
                        "killing twins by handle needs each pf handle's creator id as listed \
                         (not 0)",
                    ));
                }
                let handles = handles
                    .into_iter()
                    .map(|h| h.check().map(|()| CheckedHandle(h)))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CheckedRequest::KillHandles { handles, match_opposite })
            }
            Request::Flush { interface } => {
                let interface = match interface {
                    Some(i) => {
                        i.check()?;
                        if !caps.flush_by_interface {
                            return Err(caps.unsupported(Unsupported::FlushByInterface));
                        }
                        Some(CheckedIfName(i))
                    }
                    None => None,
                };
                Ok(CheckedRequest::Flush { interface })
            }
            Request::RulesetTicket => {
                if !caps.ruleset_ticket {
                    return Err(caps.unsupported(Unsupported::RulesetTicket));
                }
                Ok(CheckedRequest::RulesetTicket)
            }
        }
    }
}
