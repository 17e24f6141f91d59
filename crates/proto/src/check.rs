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
use crate::verbs::{Hello, Request};

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

impl Request {
    /// Check a request against `limits` (normally the broker's advertised limits).
    ///
    /// Returns the checked selectors of `Count`/`KillMatching`/`Snapshot` in request order so
    /// the caller acts on exactly what was checked.
    pub fn check(&self, limits: &Limits) -> Result<Vec<CheckedSelector>, ProtoError> {
        let max_selectors = limits.max_selectors as usize;
        match self {
            Request::Hello(Hello { client, .. }) => {
                if client.len() > crate::MAX_CLIENT_NAME_LEN {
                    return Err(ProtoError::TooMany {
                        what: "bytes in the client name",
                        count: client.len(),
                        max: crate::MAX_CLIENT_NAME_LEN,
                    });
                }
                Ok(Vec::new())
            }
            Request::Snapshot { selector } => selector.iter().map(Selector::check).collect(),
            Request::Count { selectors } => {
                if selectors.len() > max_selectors {
                    return Err(ProtoError::TooMany {
                        what: "selectors",
                        count: selectors.len(),
                        max: max_selectors,
                    });
                }
                selectors.iter().map(Selector::check).collect()
            }
            Request::KillMatching { selectors, .. } => {
                if selectors.is_empty() {
                    return Err(ProtoError::EmptySelector(
                        "KillMatching without selectors; use Flush to clear the table".into(),
                    ));
                }
                if selectors.len() > max_selectors {
                    return Err(ProtoError::TooMany {
                        what: "selectors",
                        count: selectors.len(),
                        max: max_selectors,
                    });
                }
                selectors.iter().map(Selector::check).collect()
            }
            Request::KillHandles { handles } => {
                let max = limits.max_handles as usize;
                if handles.is_empty() {
                    return Err(ProtoError::invalid("request", "KillHandles without handles"));
                }
                if handles.len() > max {
                    return Err(ProtoError::TooMany { what: "handles", count: handles.len(), max });
                }
                for h in handles {
                    h.check()?;
                }
                Ok(Vec::new())
            }
            Request::Flush { interface } => {
                if let Some(i) = interface {
                    i.check()?;
                }
                Ok(Vec::new())
            }
        }
    }
}
