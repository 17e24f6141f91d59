//! What a selector means for pf states, and how a kill is carried out: one kernel-filtered
//! pass per selector, or one listing plus kills by id with the twins paired here.
//!
//! Pure code. The semantics follow the kernel's kill filter (pf-kernel.md §2.3) so that a
//! selector kills the same states whichever path runs.

use std::collections::HashMap;
use std::net::IpAddr;

use statecull_proto::{
    CheckedSelector, L4, PfDirection, Prefix, Selector, SelectorField, StateDetail, StateHandle,
    StateKey, StateRecord, ipproto,
};

use crate::cost::{ASSUMED_VICTIM_DIVISOR, Weights, Work};
use crate::types::{
    AF_INET, AF_INET6, Direction, PfKey, PfKill, PfState, RuleAddr, port_op, twin_search,
};

/// Selector fields the pf backends understand. Marks are a conntrack concept.
pub const SUPPORTED_FIELDS: [SelectorField; 10] = [
    SelectorField::Family,
    SelectorField::Proto,
    SelectorField::Src,
    SelectorField::Dst,
    SelectorField::SrcPort,
    SelectorField::DstPort,
    SelectorField::NatAddr,
    SelectorField::Gateway,
    SelectorField::Interface,
    SelectorField::Label,
];

/// Selector fields no kernel kill filter statecull sends can express: a kill using one always
/// runs as a listing and kills by id ([`kill_filter`] answers `None`). A NAT address is the
/// wire key's firewall-side end, the filter's source for outbound states and its destination
/// for inbound ones; the kernel's stack-key flag (`nat`) cannot say it either, and
/// FreeBSD 13/14's `DIOCKILLSTATESNV` never reads that flag (only pf netlink's `PF_CS_NAT`
/// does), so statecull never sends it.
pub const LISTING_ONLY_FIELDS: [SelectorField; 1] = [SelectorField::NatAddr];

/// Why pf cannot match on `field`, for error messages.
pub fn unsupported_hint(field: SelectorField) -> Option<&'static str> {
    match field {
        SelectorField::Mark => Some(
            "pf states carry no connection mark; select a gateway's states by --gateway (route-to \
             address) or by --interface plus --nat-addr",
        ),
        _ => None,
    }
}

fn ports(r: Option<statecull_proto::PortRange>) -> ([u16; 2], u8) {
    match r {
        None => ([0, 0], port_op::NONE),
        Some(r) if r.first == r.last => ([r.first, 0], port_op::EQ),
        Some(r) => ([r.first, r.last], port_op::RRG),
    }
}

fn prefix_addr(p: Option<Prefix>) -> RuleAddr {
    p.map(|p| RuleAddr::prefix(&p.addr, p.len)).unwrap_or_default()
}

/// The kernel kill filter for a selector, or `None` when the kernel cannot express it
/// (a NAT address is the wire key's firewall-side address, which is the filter's "source"
/// for outbound states but its "destination" for inbound ones: no single filter says that).
pub fn kill_filter(sel: &CheckedSelector, kill_match: bool) -> Option<PfKill> {
    if sel.nat_addr.is_some() || sel.mark.is_some() {
        return None;
    }
    let mut k = PfKill { kill_match, ..PfKill::default() };
    k.af = match sel.family() {
        Some(statecull_proto::AddressFamily::Ipv4) => AF_INET,
        Some(statecull_proto::AddressFamily::Ipv6) => AF_INET6,
        None => 0,
    };
    k.proto = sel.proto.unwrap_or(0);
    k.src = prefix_addr(sel.src);
    k.dst = prefix_addr(sel.dst);
    (k.src.port, k.src.port_op) = ports(sel.src_port);
    (k.dst.port, k.dst.port_op) = ports(sel.dst_port);
    if let Some(gw) = sel.gateway {
        k.rt_addr = RuleAddr::prefix(&gw, if gw.is_ipv4() { 32 } else { 128 });
    }
    k.ifname = sel.interface.as_ref().map(|i| i.0.clone()).unwrap_or_default();
    k.label = sel.label.as_ref().map(|l| l.0.clone()).unwrap_or_default();
    // A checked selector always narrows, so this cannot be "every state"; refuse anyway
    // rather than ever sending such a request.
    (!k.is_everything()).then_some(k)
}

fn in_prefix(p: &Option<Prefix>, a: &IpAddr) -> bool {
    p.is_none_or(|p| p.contains(a))
}

fn in_range(r: &Option<statecull_proto::PortRange>, port: u16) -> bool {
    r.is_none_or(|r| r.contains(port))
}

/// Does a listed state match the selector? `labels` are the labels of the state's rule
/// when known; a selector with a label never matches without them (the kernel is asked
/// instead).
pub fn matches(sel: &Selector, s: &PfState, labels: Option<&[String]>) -> bool {
    let (src, sport, dst, dport) = s.kill_endpoints();
    let af = s.wire.af;
    let family_ok = match sel.family {
        None => true,
        Some(statecull_proto::AddressFamily::Ipv4) => af == AF_INET,
        Some(statecull_proto::AddressFamily::Ipv6) => af == AF_INET6,
    };
    family_ok
        && sel.proto.is_none_or(|p| p == s.wire.proto)
        && in_prefix(&sel.src, &src)
        && in_prefix(&sel.dst, &dst)
        && (sel.src_port.is_none() || in_range(&sel.src_port, sport))
        && (sel.dst_port.is_none() || in_range(&sel.dst_port, dport))
        && sel.gateway.is_none_or(|g| s.rt_addr == Some(g))
        && sel.interface.as_ref().is_none_or(|i| i.0 == s.kill_ifname())
        // The firewall-side address of the wire key: the NAT source of an outbound state,
        // the public destination of an inbound (port-forwarded) one.
        && sel.nat_addr.is_none_or(|a| s.wire.addr[1] == a)
        && sel.mark.is_none()
        && sel.label.as_ref().is_none_or(|l| labels.is_some_and(|ls| ls.contains(&l.0)))
}

/// Does the state name an address inside a protected prefix (either key, either end)?
pub fn touches(protected: &[Prefix], s: &PfState) -> bool {
    statecull_proto::listing::touches(
        protected,
        &[s.wire.addr[0], s.wire.addr[1], s.stack.addr[0], s.stack.addr[1]],
    )
}

/// The key list a state sits on that a twin lookup walks: `pf_find_state_all(key, dir)`
/// walks the states that use `key` as their `PF_SK_WIRE` key when `dir` is IN, or as their
/// `PF_SK_STACK` key when `dir` is OUT, and never looks at their direction. A state sits on
/// two lists: its wire key's (looked up with IN) and its stack key's (looked up with OUT).
pub fn key_lists(s: &PfState) -> [(PfKey, Direction); 2] {
    [(s.wire, Direction::In), (s.stack, Direction::Out)]
}

/// statecull's twin pairing for the listing path, decided here and nowhere else: for each
/// twin lookup ([`twin_search`] of a victim), the states on the list that
/// `pf_find_state_all` would walk, counted as the kernel counts them (every state on the
/// list, whatever its direction: its `more`).
///
/// The deliberate difference from the kernel's `kill_match` (`pf_killstates_row` then
/// `pf_kill_matching_state`): the kernel kills the list's only state whatever its
/// direction; statecull kills it only when it is in the lookup's direction (the opposite of
/// the victim's), because a real twin always is: the two halves of a forwarded connection
/// are one IN and one OUT state. A lone state of the victim's own direction on that list is
/// an unrelated connection whose key happens to mirror the victim's; the kernel would kill
/// it, statecull spares it. So statecull never kills a twin the kernel would spare (a list
/// of two or more is ambiguous for both), and the listing sees the table before any kill,
/// so its lists hold at least what the kernel's do when it looks. (Judged on the listing: a
/// state born on a list between the listing and the kill by id is not seen, as with any
/// listing kill.)
#[derive(Clone, Debug)]
pub struct TwinIndex<T> {
    lists: HashMap<(PfKey, Direction), Tally<T>>,
    /// Count every list (`false`: only the lookups it was made for).
    open: bool,
}

#[derive(Clone, Copy, Debug)]
struct Tally<T> {
    first: Option<(T, Direction)>,
    count: u32,
}

impl<T> Default for Tally<T> {
    fn default() -> Self {
        Self { first: None, count: 0 }
    }
}

impl<T: Copy> TwinIndex<T> {
    /// An index that counts only the lists these lookups walk (a listing kill: memory is
    /// bounded by the victims, never the table).
    pub fn for_lookups(lookups: impl IntoIterator<Item = (PfKey, Direction)>) -> Self {
        Self { lists: lookups.into_iter().map(|l| (l, Tally::default())).collect(), open: false }
    }

    /// An index over every list of the states added.
    pub fn over_all() -> Self {
        Self { lists: HashMap::new(), open: true }
    }

    /// Count a listed state on both lists it sits on; `tag` is what [`TwinIndex::twin`]
    /// gives back for it.
    pub fn add(&mut self, s: &PfState, tag: T) {
        for list in key_lists(s) {
            let tally = if self.open {
                Some(self.lists.entry(list).or_default())
            } else {
                self.lists.get_mut(&list)
            };
            if let Some(t) = tally {
                if t.first.is_none() {
                    t.first = Some((tag, s.direction));
                }
                t.count = t.count.saturating_add(1);
            }
        }
    }

    /// The twin for a lookup ([`twin_search`] of a victim): the list's only state, when it
    /// is in the lookup's direction (see the type's documentation).
    pub fn twin(&self, lookup: &(PfKey, Direction)) -> Option<T> {
        match self.lists.get(lookup) {
            Some(Tally { first: Some((tag, dir)), count: 1 }) if *dir == lookup.1 => Some(*tag),
            _ => None,
        }
    }
}

/// For each victim (index into `states`), its twin's index by [`TwinIndex`]'s rule, with
/// `states` the whole listing.
pub fn pair_twins(states: &[PfState], victims: &[usize]) -> Vec<Option<usize>> {
    let mut index = TwinIndex::over_all();
    for (i, s) in states.iter().enumerate() {
        index.add(s, i);
    }
    victims.iter().map(|v| index.twin(&twin_search(&states[*v]))).collect()
}

/// How a kill request is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// One kernel-filtered kill per filter (each a full pass; the kernel pairs twins).
    Filtered(Vec<PfKill>),
    /// Kernel-filtered kills for the label selectors (the kernel alone knows labels), and one
    /// listing for the rest, whose victims and twins are then killed by id.
    ListThenIds { filtered: Vec<PfKill>, listed: Vec<CheckedSelector> },
}

impl Path {
    /// Full table passes this path costs in the kernel.
    pub fn passes(&self) -> usize {
        match self {
            Path::Filtered(f) => f.len(),
            Path::ListThenIds { filtered, listed } => {
                filtered.len() + usize::from(!listed.is_empty())
            }
        }
    }
}

/// Why a request cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Unsupported(String),
}

/// What the backend knows about the table's shape, for choosing a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// States at the last listing.
    pub states: u64,
    /// Id-hash rows (`net.pf.states_hashsize`).
    pub rows: u64,
}

/// Rows a table of unknown size is assumed to fill to, per id-hash row, until the broker has
/// seen a listing: a moderately loaded table (it only sizes the row-restart term).
pub const ASSUMED_ROWLEN: u64 = 4;

/// What each path would cost, priced with [`Weights::MEASURED`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Priced {
    /// One filtered pass per selector.
    pub filtered_us: f64,
    /// One listing (two with twins) and kills by id.
    pub listing_us: f64,
}

/// Price both paths for `plain` selectors (no labels) on `table`.
pub fn price(plain: usize, kill_match: bool, table: Option<TableShape>, rows: u64) -> Priced {
    let rows = table.map_or(rows, |t| t.rows).max(1);
    let states = table.map_or(rows * ASSUMED_ROWLEN, |t| t.states);
    let victims = states / ASSUMED_VICTIM_DIVISOR;
    let w = Weights::MEASURED;
    Priced {
        filtered_us: w.price(&Work::filtered(plain as u64, states, rows, victims, kill_match)),
        listing_us: w.price(&Work::listing(states, victims, kill_match)),
    }
}

/// Choose the cheaper path by the kernel's real work ([`crate::cost`]).
///
/// * A filtered pass per selector compares every state once per selector (cheap, in the
///   kernel) and restarts a row after each kill; the kernel pairs twins itself.
/// * A listing exports every state once (dear: a message per state to decode; twice when
///   twins are wanted, so the broker never holds the table) and kills by id.
///
/// So a handful of selectors (down gateways) run as one filtered pass each, many selectors
/// as one listing. Selectors the kernel cannot express (a NAT address) and protected
/// prefixes (the kernel's filter cannot spare) always take the listing; label selectors
/// cannot be listed (only the kernel knows labels) and always run filtered. `rows` is the
/// kernel's `net.pf.states_hashsize`, for a table not yet seen.
pub fn choose(
    selectors: &[CheckedSelector],
    kill_match: bool,
    protected: &[Prefix],
    table: Option<TableShape>,
) -> Result<Path, PlanError> {
    choose_with_rows(selectors, kill_match, protected, table, crate::types::DEFAULT_ROWS as u64)
}

/// [`choose`] for a kernel with `rows` id-hash rows.
pub fn choose_with_rows(
    selectors: &[CheckedSelector],
    kill_match: bool,
    protected: &[Prefix],
    table: Option<TableShape>,
    rows: u64,
) -> Result<Path, PlanError> {
    let (labelled, plain): (Vec<&CheckedSelector>, Vec<&CheckedSelector>) =
        selectors.iter().partition(|s| s.label.is_some());
    if !labelled.is_empty() && !protected.is_empty() {
        return Err(PlanError::Unsupported(
            "label selectors cannot honour protected prefixes on pf: only the kernel knows \
             which rule labels a state has, and its filter cannot spare prefixes"
                .into(),
        ));
    }
    let mut filtered = Vec::new();
    for s in &labelled {
        filtered.push(kill_filter(s, kill_match).ok_or_else(|| {
            PlanError::Unsupported(format!(
                "\"{s}\": a label cannot be combined with a NAT address on pf"
            ))
        })?);
    }
    if plain.is_empty() {
        return Ok(Path::Filtered(filtered));
    }
    let expressible = plain.iter().all(|s| kill_filter(s, kill_match).is_some());
    if expressible && protected.is_empty() {
        let priced = price(plain.len(), kill_match, table, rows);
        if priced.filtered_us <= priced.listing_us {
            filtered.extend(plain.iter().filter_map(|s| kill_filter(s, kill_match)));
            return Ok(Path::Filtered(filtered));
        }
    }
    Ok(Path::ListThenIds { filtered, listed: plain.into_iter().cloned().collect() })
}

fn oriented(k: &PfKey, dir: Direction) -> StateKey {
    let (src, sport, dst, dport) = match dir {
        Direction::In => (k.addr[0], k.port[0], k.addr[1], k.port[1]),
        Direction::Out => (k.addr[1], k.port[1], k.addr[0], k.port[0]),
    };
    let l4 = if ipproto::has_ports(k.proto) || k.proto == ipproto::GRE {
        L4::Ports { src: sport, dst: dport }
    } else if k.proto == ipproto::ICMP || k.proto == ipproto::ICMPV6 {
        // pf keeps only the echo id (in both port slots); type and code are not in the key.
        L4::Icmp { id: sport, kind: 0, code: 0 }
    } else {
        L4::None
    };
    StateKey { proto: k.proto, src, dst, l4 }
}

/// The protocol record of a listed state. Its `key` is the stack key (before NAT) oriented
/// from the connection's source to its destination.
pub fn to_record(s: &PfState) -> StateRecord {
    let direction = match s.direction {
        Direction::In => PfDirection::In,
        Direction::Out => PfDirection::Out,
    };
    StateRecord {
        handle: StateHandle::Pf { id: s.id, creator_id: s.creatorid },
        key: oriented(&s.stack, s.direction),
        detail: StateDetail::Pf {
            direction,
            interface: s.ifname.clone(),
            orig_interface: s.orig_ifname.clone(),
            wire: oriented(&s.wire, s.direction),
            stack: oriented(&s.stack, s.direction),
            gateway: s.rt_addr,
            rule: (s.rule != u32::MAX).then_some(s.rule),
        },
        expires_in_secs: Some(s.expire),
        counters: Some(statecull_proto::Counters {
            orig_packets: s.packets[0],
            orig_bytes: s.bytes[0],
            reply_packets: s.packets[1],
            reply_bytes: s.bytes[1],
        }),
    }
}
