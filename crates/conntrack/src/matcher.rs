//! What a selector means for a conntrack entry, and how much of it the kernel can do.
//!
//! Pure code. The userspace match here is authoritative: kernel filters only reduce what is
//! dumped, and a kernel flush is used only when its filter expresses the whole selector.

use std::net::IpAddr;

use statecull_proto::{AddressFamily, CheckedSelector, Prefix, Selector, SelectorField};

use crate::ct::{CtEntry, KernelFilter};

/// Selector fields the conntrack backend understands. Gateway, interface and label are pf
/// concepts: a conntrack entry records neither a next hop nor an interface nor a rule.
pub const SUPPORTED_FIELDS: [SelectorField; 8] = [
    SelectorField::Family,
    SelectorField::Proto,
    SelectorField::Src,
    SelectorField::Dst,
    SelectorField::SrcPort,
    SelectorField::DstPort,
    SelectorField::Mark,
    SelectorField::NatAddr,
];

/// Why the conntrack backend cannot match on `field`, and what to use instead; `None` for
/// supported fields.
pub fn unsupported_hint(field: SelectorField) -> Option<&'static str> {
    match field {
        SelectorField::Gateway => Some(
            "conntrack entries do not record the next hop; select a gateway's connections by \
             its ct mark (--mark) or its SNAT address (--nat-addr)",
        ),
        SelectorField::Interface => {
            Some("conntrack entries do not record interfaces; use --mark or --nat-addr")
        }
        SelectorField::Label => Some("pf rule labels do not exist in conntrack; use --mark"),
        _ => None,
    }
}

/// Refuse selectors that use fields this backend cannot match, naming the field and what to
/// use instead.
pub fn check_supported(sel: &Selector) -> Result<(), String> {
    for field in sel.fields() {
        if let Some(hint) = unsupported_hint(field) {
            return Err(format!("the conntrack backend cannot match on {field}: {hint}"));
        }
    }
    Ok(())
}

/// Does the selector use fields that only a tuple filter (`CTA_FILTER`) can express?
pub fn uses_tuple_fields(sel: &Selector) -> bool {
    sel.src.is_some_and(|p| p.len > 0)
        || sel.dst.is_some_and(|p| p.len > 0)
        || sel.proto.is_some()
        || sel.src_port.is_some()
        || sel.dst_port.is_some()
        || sel.nat_addr.is_some()
}

/// Does `entry` match every field of `sel`?
pub fn matches(sel: &Selector, e: &CtEntry) -> bool {
    if let Some(f) = sel.family
        && e.orig.family() != f
    {
        return false;
    }
    if let Some(p) = sel.proto
        && e.orig.proto != p
    {
        return false;
    }
    if let Some(p) = sel.src
        && !p.contains(&e.orig.src)
    {
        return false;
    }
    if let Some(p) = sel.dst
        && !p.contains(&e.orig.dst)
    {
        return false;
    }
    if let Some(r) = sel.src_port
        && !e.orig.src_port().is_some_and(|p| r.contains(p))
    {
        return false;
    }
    if let Some(r) = sel.dst_port
        && !e.orig.dst_port().is_some_and(|p| r.contains(p))
    {
        return false;
    }
    if let Some(m) = sel.mark
        && !m.matches(e.mark)
    {
        return false;
    }
    if let Some(a) = sel.nat_addr
        && e.reply.dst != a
    {
        return false;
    }
    // Fields this backend does not support never match (and are refused before we get here).
    sel.gateway.is_none() && sel.interface.is_none() && sel.label.is_none()
}

/// Does `entry` touch a protected prefix (any address of either tuple)?
pub fn touches(protected: &[Prefix], e: &CtEntry) -> bool {
    if protected.is_empty() {
        return false;
    }
    statecull_proto::listing::touches(
        protected,
        &[e.orig.src, e.orig.dst, e.reply.src, e.reply.dst],
    )
}

/// What the kernel can do for a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPlan {
    /// The filter to send (possibly empty).
    pub filter: KernelFilter,
    /// True when `filter` expresses the whole selector, so a kernel flush with it deletes
    /// exactly the matching entries.
    pub complete: bool,
}

/// Which kernel filter features may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `CTA_MARK`/`CTA_MARK_MASK` filtering on dumps and flushes.
    pub mark: bool,
    /// A flush honours the `nfgenmsg` family (`version = 1`); kernels that accept
    /// `CTA_FILTER` on flush do.
    pub family_flush: bool,
    /// `CTA_FILTER` tuple filtering is accepted *and* its IPv4 address matching was seen to
    /// select the right entries.
    pub tuple_v4: bool,
    /// The same for IPv6. Linux 6.18 accepts IPv6 tuple filters but inverts the address
    /// comparison (`!ipv6_addr_cmp()` treats equal as different), so this is only true after
    /// a probe saw a correct answer.
    pub tuple_v6: bool,
}

impl KernelFeatures {
    /// Every filter, trusted (for tests of the planner).
    pub const ALL: KernelFeatures =
        KernelFeatures { mark: true, family_flush: true, tuple_v4: true, tuple_v6: true };
    /// Mark filtering only, as on kernels before 6.x.
    pub const MARK_ONLY: KernelFeatures =
        KernelFeatures { mark: true, family_flush: false, tuple_v4: false, tuple_v6: false };
    /// Nothing in the kernel: every kill dumps and deletes.
    pub const NONE: KernelFeatures =
        KernelFeatures { mark: false, family_flush: false, tuple_v4: false, tuple_v6: false };

    pub fn tuple(&self, family: AddressFamily) -> bool {
        match family {
            AddressFamily::Ipv4 => self.tuple_v4,
            AddressFamily::Ipv6 => self.tuple_v6,
        }
    }
}

fn host(p: Option<Prefix>) -> Option<Option<IpAddr>> {
    match p {
        None => Some(None),
        Some(p) if p.is_host() => Some(Some(p.addr)),
        Some(_) => None,
    }
}

fn single_port(r: Option<statecull_proto::PortRange>) -> Option<Option<u16>> {
    match r {
        None => Some(None),
        Some(r) if r.first == r.last => Some(Some(r.first)),
        Some(_) => None,
    }
}

/// Translate as much of `sel` as the kernel can filter on.
///
/// The filter is always a necessary condition of the selector (never drops a matching
/// entry), so it is safe as a dump prefilter; `complete` says whether it is also sufficient,
/// which a flush needs.
pub fn kernel_plan(sel: &CheckedSelector, features: KernelFeatures) -> KernelPlan {
    let mut filter = KernelFilter::default();
    let mut complete = true;
    let family = sel.family();

    if features.mark {
        filter.mark = sel.mark;
    } else if sel.mark.is_some() {
        complete = false;
    }

    // Dumps always honour the family; a flush only when the kernel says so.
    filter.family = family;
    if family.is_some() && !features.family_flush {
        complete = false;
    }

    // A /0 prefix narrows nothing beyond the family, which is already filtered.
    let nonzero = |p: Option<Prefix>| p.filter(|p| p.len > 0);
    let src = nonzero(sel.src);
    let dst = nonzero(sel.dst);
    let tuple_fields = src.is_some()
        || dst.is_some()
        || sel.proto.is_some()
        || sel.src_port.is_some()
        || sel.dst_port.is_some()
        || sel.nat_addr.is_some();
    let tuple_ok = family.is_some_and(|f| features.tuple(f));
    if tuple_fields && !tuple_ok {
        // No family (the kernel needs one for tuple filters) or no trustworthy tuple
        // filtering for it: userspace does these fields.
        complete = false;
    } else if tuple_fields {
        // Exact hosts and single ports go to the kernel; prefixes and ranges stay here.
        match host(src) {
            Some(a) => filter.orig_src = a,
            None => complete = false,
        }
        match host(dst) {
            Some(a) => filter.orig_dst = a,
            None => complete = false,
        }
        filter.proto = sel.proto;
        match single_port(sel.src_port) {
            Some(p) => filter.orig_src_port = p,
            None => complete = false,
        }
        match single_port(sel.dst_port) {
            Some(p) => filter.orig_dst_port = p,
            None => complete = false,
        }
        filter.reply_dst = sel.nat_addr;
    }
    if sel.gateway.is_some() || sel.interface.is_some() || sel.label.is_some() {
        complete = false;
    }
    KernelPlan { filter, complete }
}

/// The one family every selector names, if they all name the same one.
pub fn common_family(sels: &[CheckedSelector]) -> Option<AddressFamily> {
    let first = sels.first()?.family()?;
    sels.iter().all(|s| s.family() == Some(first)).then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use statecull_proto::{L4, MarkMatch, PortRange, StateKey};

    fn entry(mark: u32, nat: &str) -> CtEntry {
        let orig = StateKey {
            proto: 6,
            src: "192.0.2.10".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            dst: "198.18.0.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            l4: L4::Ports { src: 40000, dst: 443 },
        };
        let reply = StateKey {
            proto: 6,
            src: orig.dst,
            dst: nat.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            l4: L4::Ports { src: 443, dst: 40000 },
        };
        CtEntry {
            orig,
            reply,
            id: 1,
            zone: 0,
            mark,
            status: 0,
            timeout: None,
            tcp_state: None,
            counters: None,
        }
    }

    fn sel(f: impl FnOnce(&mut Selector)) -> CheckedSelector {
        let mut s = Selector::default();
        f(&mut s);
        s.check().unwrap_or_else(|e| panic!("test selector invalid: {e}"))
    }

    #[test]
    fn match_semantics() {
        let e = entry(1, "198.51.100.1");
        assert!(matches(&sel(|s| s.mark = Some(MarkMatch { value: 1, mask: 0xff })), &e));
        assert!(!matches(&sel(|s| s.mark = Some(MarkMatch { value: 2, mask: 0xff })), &e));
        assert!(matches(&sel(|s| s.nat_addr = "198.51.100.1".parse().ok()), &e));
        assert!(!matches(&sel(|s| s.nat_addr = "203.0.113.1".parse().ok()), &e));
        assert!(matches(&sel(|s| s.src = "192.0.2.0/24".parse().ok()), &e));
        assert!(!matches(&sel(|s| s.dst = "192.0.2.0/24".parse().ok()), &e));
        assert!(matches(
            &sel(|s| {
                s.proto = Some(6);
                s.dst_port = Some(PortRange { first: 400, last: 500 });
            }),
            &e
        ));
        assert!(!matches(&sel(|s| s.proto = Some(17)), &e));
        assert!(!matches(
            &sel(|s| {
                s.family = Some(AddressFamily::Ipv6);
                s.mark = Some(MarkMatch { value: 1, mask: 0xff });
            }),
            &e
        ));
    }

    #[test]
    fn protection_checks_all_four_addresses() {
        let e = entry(1, "198.51.100.1");
        for p in ["192.0.2.10/32", "198.18.0.0/16", "198.51.100.0/24"] {
            let p: Prefix = p.parse().unwrap_or_else(|e| panic!("{e}"));
            assert!(touches(&[p], &e), "{p}");
        }
        let p: Prefix = "203.0.113.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!touches(&[p], &e));
        assert!(!touches(&[], &e));
    }

    #[test]
    fn kernel_plans() {
        let all = KernelFeatures::ALL;
        let old = KernelFeatures::MARK_ONLY;
        let mark = sel(|s| s.mark = Some(MarkMatch { value: 1, mask: 0xff }));
        assert!(kernel_plan(&mark, all).complete);
        assert!(kernel_plan(&mark, old).complete);
        let nat = sel(|s| s.nat_addr = "198.51.100.1".parse().ok());
        let p = kernel_plan(&nat, all);
        assert!(p.complete);
        assert_eq!(p.filter.family, Some(AddressFamily::Ipv4));
        assert!(!kernel_plan(&nat, old).complete);
        let prefix = sel(|s| s.src = "192.0.2.0/24".parse().ok());
        assert!(!kernel_plan(&prefix, all).complete);
        let host = sel(|s| s.src = "192.0.2.7".parse().ok());
        assert!(kernel_plan(&host, all).complete);
        let range = sel(|s| {
            s.proto = Some(6);
            s.dst_port = Some(PortRange { first: 1, last: 2 });
        });
        assert!(!kernel_plan(&range, all).complete);
        // A tuple field without any address has no family: userspace.
        let proto_only = sel(|s| s.proto = Some(17));
        let p = kernel_plan(&proto_only, all);
        assert!(!p.complete);
        assert!(p.filter.is_empty());
        // Mark plus family needs a family-honouring flush.
        let mark_v6 = sel(|s| {
            s.mark = Some(MarkMatch { value: 1, mask: 1 });
            s.family = Some(AddressFamily::Ipv6);
        });
        assert!(kernel_plan(&mark_v6, all).complete);
        let p = kernel_plan(&mark_v6, old);
        assert!(!p.complete);
        assert_eq!(p.filter.family, Some(AddressFamily::Ipv6), "dumps still filter by family");
    }

    #[test]
    fn untrusted_ipv6_tuple_filters_are_not_used() {
        // As on Linux 6.18, where IPv6 address matching in CTA_FILTER is inverted.
        let v4_only = KernelFeatures { tuple_v6: false, ..KernelFeatures::ALL };
        let nat6 = sel(|s| s.nat_addr = "2001:db8:a::1".parse().ok());
        let p = kernel_plan(&nat6, v4_only);
        assert!(!p.complete, "no flush with an untrusted filter");
        assert_eq!(p.filter.reply_dst, None, "and no dump prefilter that could hide entries");
        assert_eq!(p.filter.family, Some(AddressFamily::Ipv6));
        let nat4 = sel(|s| s.nat_addr = "198.51.100.1".parse().ok());
        assert!(kernel_plan(&nat4, v4_only).complete);
    }
}
