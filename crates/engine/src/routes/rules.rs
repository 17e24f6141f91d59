//! Policy routing, pure: `ip rule` dumps decoded into [`Rule`]s, and the one decision over a
//! snapshot of rules and routes: where would the kernel send a new forwarded connection
//! ([`Snapshot::outcomes`]), and so has routing moved off a gateway ([`Snapshot::moved_off`])
//! or back onto it ([`Snapshot::uses`]).
//!
//! The walk follows `fib_rules_lookup()`: rules in priority order; a rule matches when all
//! its selectors do (`FIB_RULE_INVERT` negates that); `lookup TABLE` ends the walk when the
//! table has a route for the packet, unless the rule suppresses it (`suppress_prefixlength N`
//! drops a result whose prefix is at most /N: mwan3's and wg-quick's `lookup main
//! suppress_prefixlength 0` never yields a default route); `goto PRIO` jumps to the first
//! rule of that priority (an unresolved goto is passed over); `nop` is passed over;
//! `blackhole`, `unreachable` and `prohibit` drop the packet. A table's answer for an
//! Internet destination is its default route of the lowest metric (all of them, with
//! every next hop of a multipath route); a `throw` default lets the walk go on.
//!
//! What is known of the connection: its family, that it is forwarded (it has no output
//! interface; it did not arrive on `lo` or on one of the policy's gateway interfaces; its
//! source is not one of the firewall's own addresses, which the `local` table lists), and
//! its firewall mark (the bits of the gateway's `states.mark` mask when routing selects on
//! them, else no mark at all). Everything else (source and destination prefixes, TOS/DSCP,
//! protocol, ports, uid range, other mark bits) is unknown: such a rule may or may not
//! match, and both ways are followed. That only adds outcomes, so an unknown can make the
//! engine wait longer for routing, never kill before routing moved.

#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::HashMap;
use std::net::IpAddr;

use statecull_netlink::Attrs;
use statecull_proto::{AddressFamily, MarkMatch, Prefix};

use super::parse::{AF_INET, AF_INET6, Route, RouteKind, bad};
use crate::error::EngineError;

pub(super) const RTM_NEWRULE: u16 = 32;
pub(super) const RTM_GETRULE: u16 = 34;
/// `sizeof(struct fib_rule_hdr)`.
pub(super) const FIB_RULE_HDR_LEN: usize = 12;

const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_IIFNAME: u16 = 3;
const FRA_GOTO: u16 = 4;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_FLOW: u16 = 11;
const FRA_TUN_ID: u16 = 12;
const FRA_SUPPRESS_IFGROUP: u16 = 13;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_OIFNAME: u16 = 17;
const FRA_L3MDEV: u16 = 19;
const FRA_UID_RANGE: u16 = 20;
const FRA_IP_PROTO: u16 = 22;
const FRA_SPORT_RANGE: u16 = 23;
const FRA_DPORT_RANGE: u16 = 24;

const FIB_RULE_INVERT: u32 = 0x2;

/// The routing table `main`.
pub(super) const RT_TABLE_MAIN: u32 = 254;
/// The routing table `local`.
pub(super) const RT_TABLE_LOCAL: u32 = 255;
/// The routing table `default`.
pub(super) const RT_TABLE_DEFAULT: u32 = 253;
/// `rtm_type` of a local address route.
const RTN_LOCAL: u8 = 2;
/// Walks longer than this (gotos included) are cut short as "no route"; the kernel
/// allows only forward gotos, so a real rule list never gets near it.
const MAX_STEPS: usize = 100_000;

/// What a rule does when it matches (`fib_rule_hdr.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    /// `lookup TABLE`.
    Lookup(u32),
    /// `goto PRIORITY`.
    Goto(u32),
    /// `nop`.
    Nop,
    /// `blackhole`, `unreachable`, `prohibit`: the packet is dropped.
    Drop,
    /// Anything else: the kernel fails the lookup (the packet is dropped).
    Other(u8),
}

/// One `ip rule`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub family: AddressFamily,
    pub priority: u32,
    pub action: RuleAction,
    /// `not`: the selectors' verdict is negated.
    pub invert: bool,
    /// `from PREFIX` (none: any source).
    pub src: Option<Prefix>,
    /// `to PREFIX` (none: any destination).
    pub dst: Option<Prefix>,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// `fwmark VALUE/MASK`; mask 0 selects nothing.
    pub fwmark: MarkMatch,
    /// `suppress_prefixlength N`.
    pub suppress_prefixlen: Option<u32>,
    /// `suppress_ifgroup G`.
    pub suppress_ifgroup: bool,
    /// Selectors on what is not known of a new connection (TOS/DSCP, realms, tunnel id,
    /// l3mdev, uid range, protocol, ports).
    pub opaque: bool,
}

/// Decode one `RTM_NEWRULE` payload; `None` for families other than IPv4 and IPv6.
pub(super) fn parse_rule(payload: &[u8]) -> Result<Option<Rule>, EngineError> {
    if payload.len() < FIB_RULE_HDR_LEN {
        return Err(bad(format!(
            "fib_rule_hdr of {} bytes, expected {FIB_RULE_HDR_LEN}",
            payload.len()
        )));
    }
    let family = match payload[0] {
        AF_INET => AddressFamily::Ipv4,
        AF_INET6 => AddressFamily::Ipv6,
        _ => return Ok(None),
    };
    let (dst_len, src_len, tos, hdr_table, action) =
        (payload[1], payload[2], payload[3], payload[4], payload[7]);
    for len in [dst_len, src_len] {
        if len > family.bits() {
            return Err(bad(format!("rule prefix length {len} for {family:?}")));
        }
    }
    let flags = u32::from_ne_bytes([payload[8], payload[9], payload[10], payload[11]]);
    let mut table = u32::from(hdr_table);
    let mut priority = 0;
    let mut goto = None;
    let (mut src, mut dst, mut iif, mut oif) = (None, None, None, None);
    let (mut mark, mut mask) = (None, None);
    let mut suppress_prefixlen = None;
    let mut suppress_ifgroup = false;
    let mut opaque = tos != 0;
    let addr = |v: &[u8], what: &str| -> Result<IpAddr, EngineError> {
        match (family, v.len()) {
            (AddressFamily::Ipv4, 4) | (AddressFamily::Ipv6, 16) => {
                super::parse::addr_of_len(v, what)
            }
            (_, n) => Err(bad(format!("{what}: {n} bytes for {family:?}"))),
        }
    };
    let u32v = |v: &[u8], what: &str| statecull_netlink::get_u32(v, what).map_err(super::parse::nl);
    let name = |v: &[u8]| -> String {
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        String::from_utf8_lossy(&v[..end]).into_owned()
    };
    for attr in Attrs::new(&payload[FIB_RULE_HDR_LEN..]) {
        let (kind, value) = attr.map_err(super::parse::nl)?;
        match kind {
            FRA_DST => dst = Some(Prefix { addr: addr(value, "FRA_DST")?, len: dst_len }),
            FRA_SRC => src = Some(Prefix { addr: addr(value, "FRA_SRC")?, len: src_len }),
            FRA_IIFNAME => iif = Some(name(value)),
            FRA_OIFNAME => oif = Some(name(value)),
            FRA_GOTO => goto = Some(u32v(value, "FRA_GOTO")?),
            FRA_PRIORITY => priority = u32v(value, "FRA_PRIORITY")?,
            FRA_FWMARK => mark = Some(u32v(value, "FRA_FWMARK")?),
            FRA_FWMASK => mask = Some(u32v(value, "FRA_FWMASK")?),
            FRA_TABLE => table = u32v(value, "FRA_TABLE")?,
            FRA_SUPPRESS_PREFIXLEN => {
                let n = u32v(value, "FRA_SUPPRESS_PREFIXLEN")?;
                suppress_prefixlen = (n != u32::MAX).then_some(n);
            }
            FRA_SUPPRESS_IFGROUP => {
                suppress_ifgroup = u32v(value, "FRA_SUPPRESS_IFGROUP")? != u32::MAX;
            }
            FRA_FLOW | FRA_TUN_ID | FRA_L3MDEV | FRA_UID_RANGE | FRA_IP_PROTO | FRA_SPORT_RANGE
            | FRA_DPORT_RANGE => opaque = true,
            // DSCP (25), flow label (26) and what later kernels add select on packet
            // fields statecull does not know either.
            k if k >= 25 => opaque = true,
            _ => {}
        }
    }
    if (src_len != 0 && src.is_none()) || (dst_len != 0 && dst.is_none()) {
        return Err(bad("rule prefix length without its address"));
    }
    // As the kernel stores it: a mark without a mask selects all 32 bits.
    let fwmark = match (mark, mask) {
        (None, None) => MarkMatch { value: 0, mask: 0 },
        (Some(m), None) => MarkMatch { value: m, mask: if m == 0 { 0 } else { u32::MAX } },
        (m, Some(k)) => MarkMatch { value: m.unwrap_or(0) & k, mask: k },
    };
    // fib_rule_hdr.action: FR_ACT_TO_TBL 1, GOTO 2, NOP 3, BLACKHOLE 6, UNREACHABLE 7,
    // PROHIBIT 8.
    let action = match action {
        1 => RuleAction::Lookup(table),
        2 => match goto {
            Some(target) => RuleAction::Goto(target),
            None => return Err(bad("goto rule without FRA_GOTO")),
        },
        3 => RuleAction::Nop,
        6..=8 => RuleAction::Drop,
        a => RuleAction::Other(a),
    };
    Ok(Some(Rule {
        family,
        priority,
        action,
        invert: flags & FIB_RULE_INVERT != 0,
        src,
        dst,
        iif,
        oif,
        fwmark,
        suppress_prefixlen,
        suppress_ifgroup,
        opaque,
    }))
}

/// The kernel's rules when a family has none listed (a snapshot without rules): `local`,
/// `main`, `default`.
fn default_rules(family: AddressFamily) -> Vec<Rule> {
    [(0, RT_TABLE_LOCAL), (32766, RT_TABLE_MAIN), (32767, RT_TABLE_DEFAULT)]
        .into_iter()
        .map(|(priority, table)| Rule {
            family,
            priority,
            action: RuleAction::Lookup(table),
            invert: false,
            src: None,
            dst: None,
            iif: None,
            oif: None,
            fwmark: MarkMatch { value: 0, mask: 0 },
            suppress_prefixlen: None,
            suppress_ifgroup: false,
            opaque: false,
        })
        .collect()
}

/// A new forwarded connection, as far as the engine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub family: AddressFamily,
    /// The known bits of its firewall mark (`mask`) and their `value`; bits outside the
    /// mask are unknown. An unmarked connection: value 0, mask all ones.
    pub mark: MarkMatch,
    /// Interfaces it cannot have arrived on (the gateways' own).
    pub not_from: Vec<String>,
}

impl Flow {
    /// A connection the firewall has not marked (or marks only after routing).
    pub fn unmarked(family: AddressFamily, not_from: Vec<String>) -> Self {
        Flow { family, mark: MarkMatch { value: 0, mask: u32::MAX }, not_from }
    }
}

/// Where the kernel may send a new connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// Forwarded by a default route of `table` to these next hops (none: a device route).
    Via { table: u32, gateways: Vec<IpAddr> },
    /// Dropped by a rule or a route (`blackhole`, `unreachable`, `prohibit`).
    Dropped,
    /// No rule found a route (`-ESRCH`/`-ENETUNREACH`).
    NoRoute,
}

impl Outcome {
    fn uses(&self, gw: IpAddr) -> bool {
        matches!(self, Outcome::Via { gateways, .. } if gateways.contains(&gw))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Yes, Tri::Yes) => Tri::Yes,
            _ => Tri::Maybe,
        }
    }
}

/// Rules and routes of both families at one moment, with what the decision needs indexed.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    rules: Vec<Rule>,
    routes: Vec<Route>,
    /// Default routes per (family, table).
    defaults: HashMap<(AddressFamily, u32), Vec<usize>>,
    /// The firewall's own addresses (`local` routes of the `local` table).
    local: Vec<IpAddr>,
}

impl Snapshot {
    /// Index `rules` (any order: sorted here by priority, ties kept in dump order, as the
    /// kernel lists them) and `routes`.
    pub fn new(mut rules: Vec<Rule>, routes: Vec<Route>) -> Self {
        rules.sort_by_key(|r| (r.family == AddressFamily::Ipv6, r.priority));
        let mut defaults: HashMap<(AddressFamily, u32), Vec<usize>> = HashMap::new();
        let mut local = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if r.is_default() {
                defaults.entry((r.family, r.table)).or_default().push(i);
            }
            if r.table == RT_TABLE_LOCAL
                && r.kind == RouteKind::Other(RTN_LOCAL)
                && let Some(p) = r.dst.filter(Prefix::is_host)
            {
                local.push(p.addr);
            }
        }
        Snapshot { rules, routes, defaults, local }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every place the kernel may send `flow`, sorted, without repeats.
    pub fn outcomes(&self, flow: &Flow) -> Vec<Outcome> {
        let listed: Vec<Rule>;
        let mut rules: Vec<&Rule> = self.rules.iter().filter(|r| r.family == flow.family).collect();
        if rules.is_empty() {
            listed = default_rules(flow.family);
            rules = listed.iter().collect();
        }
        let mut walk = Walk { snap: self, flow, rules: &rules, memo: HashMap::new(), steps: 0 };
        let mut out = walk.from(0);
        out.sort();
        out.dedup();
        out
    }

    /// The flow a gateway's new connections are routed as: marked with its `mark` when some
    /// rule of its family selects on those bits (the firewall marks before routing, as
    /// mwan3 does), unmarked otherwise (no mark, or one set after routing).
    pub fn flow_for(
        &self,
        family: AddressFamily,
        mark: Option<MarkMatch>,
        not_from: Vec<String>,
    ) -> Flow {
        match mark {
            Some(m)
                if m.mask != 0
                    && self
                        .rules
                        .iter()
                        .any(|r| r.family == family && r.fwmark.mask & m.mask != 0) =>
            {
                Flow { family, mark: m, not_from }
            }
            _ => Flow::unmarked(family, not_from),
        }
    }

    /// Routing has moved off `gw` for `flow`: no way the kernel may send it leads to `gw`.
    pub fn moved_off(&self, flow: &Flow, gw: IpAddr) -> bool {
        !self.outcomes(flow).iter().any(|o| o.uses(gw))
    }

    /// Routing uses `gw` for `flow` (again): some way the kernel may send it leads to `gw`.
    pub fn uses(&self, flow: &Flow, gw: IpAddr) -> bool {
        self.outcomes(flow).iter().any(|o| o.uses(gw))
    }

    /// What does `rule` say about `flow`?
    fn matches(&self, rule: &Rule, flow: &Flow) -> Tri {
        let mut t = Tri::Yes;
        if rule.opaque {
            t = t.and(Tri::Maybe);
        }
        if let Some(name) = &rule.iif {
            // Forwarded: not from lo, not from a gateway's interface.
            let no = name == "lo" || flow.not_from.iter().any(|n| n == name);
            t = t.and(if no { Tri::No } else { Tri::Maybe });
        }
        if rule.oif.is_some() {
            // A forwarded packet's lookup has no output interface.
            t = t.and(Tri::No);
        }
        let (m, k) = (rule.fwmark, flow.mark);
        if m.mask != 0 {
            let known = m.mask & k.mask;
            t = t.and(if (m.value ^ k.value) & known != 0 {
                Tri::No
            } else if m.mask & !k.mask == 0 {
                Tri::Yes
            } else {
                Tri::Maybe
            });
        }
        if let Some(p) = rule.src.filter(|p| p.len != 0) {
            // A forwarded connection's source is not one of the firewall's addresses.
            let ours = p.is_host() && self.local.contains(&p.addr);
            t = t.and(if ours { Tri::No } else { Tri::Maybe });
        }
        if rule.dst.is_some_and(|p| p.len != 0) {
            t = t.and(Tri::Maybe);
        }
        match (t, rule.invert) {
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
            (t, _) => t,
        }
    }

    /// A table's answer for an Internet destination: `None` when it has none (or throws),
    /// else the outcomes of its lowest-metric default routes.
    fn lookup(&self, family: AddressFamily, table: u32) -> Option<Vec<Outcome>> {
        let idx = self.defaults.get(&(family, table))?;
        let usable =
            |r: &&Route| matches!(r.kind, RouteKind::Unicast | RouteKind::Drop | RouteKind::Throw);
        let best = idx.iter().map(|i| &self.routes[*i]).filter(usable).map(metric).min()?;
        let mut out = Vec::new();
        for r in idx.iter().map(|i| &self.routes[*i]).filter(usable) {
            if metric(r) != best {
                continue;
            }
            match r.kind {
                RouteKind::Unicast => {
                    out.push(Outcome::Via { table, gateways: r.gateways.clone() })
                }
                RouteKind::Drop => out.push(Outcome::Dropped),
                // Throw (and anything else) ends this table's lookup without a route.
                _ => {}
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

fn metric(r: &Route) -> u32 {
    r.priority.unwrap_or(0)
}

struct Walk<'a> {
    snap: &'a Snapshot,
    flow: &'a Flow,
    rules: &'a [&'a Rule],
    /// Outcomes from each rule index on (the walk's state is its position alone).
    memo: HashMap<usize, Vec<Outcome>>,
    steps: usize,
}

impl Walk<'_> {
    /// Outcomes of the walk from rule `i` on.
    fn from(&mut self, i: usize) -> Vec<Outcome> {
        if let Some(o) = self.memo.get(&i) {
            return o.clone();
        }
        self.steps += 1;
        let Some(rule) = self.rules.get(i).copied() else { return vec![Outcome::NoRoute] };
        if self.steps > MAX_STEPS {
            return vec![Outcome::NoRoute];
        }
        let m = self.snap.matches(rule, self.flow);
        let mut out = Vec::new();
        if m != Tri::No {
            out.extend(self.taken(i, rule));
        }
        if m != Tri::Yes {
            out.extend(self.from(i + 1));
        }
        out.sort();
        out.dedup();
        self.memo.insert(i, out.clone());
        out
    }

    /// Outcomes when rule `i` matched.
    fn taken(&mut self, i: usize, rule: &Rule) -> Vec<Outcome> {
        match rule.action {
            RuleAction::Lookup(table) => {
                let Some(found) = self.snap.lookup(self.flow.family, table) else {
                    return self.from(i + 1);
                };
                // Only default routes are looked at: their prefix length is 0, so any
                // suppress_prefixlength suppresses a route found (a dropping route is an
                // error, not a result, and is never suppressed).
                if rule.suppress_prefixlen.is_some() {
                    let forwarded = found.iter().any(|o| matches!(o, Outcome::Via { .. }));
                    let mut out: Vec<Outcome> =
                        found.into_iter().filter(|o| *o == Outcome::Dropped).collect();
                    if forwarded {
                        out.extend(self.from(i + 1));
                    }
                    return out;
                }
                if rule.suppress_ifgroup {
                    // Whether the route's device is in the group is not known: both.
                    let mut out = found;
                    out.extend(self.from(i + 1));
                    return out;
                }
                found
            }
            RuleAction::Goto(target) => {
                match self.rules.iter().enumerate().skip(i + 1).find(|(_, r)| r.priority == target)
                {
                    Some((j, _)) => self.from(j),
                    None => self.from(i + 1),
                }
            }
            RuleAction::Nop => self.from(i + 1),
            RuleAction::Drop | RuleAction::Other(_) => vec![Outcome::Dropped],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mark(s: &str) -> MarkMatch {
        let (v, m) = s.split_once('/').unwrap_or((s, "0xffffffff"));
        let n = |x: &str| u32::from_str_radix(x.trim_start_matches("0x"), 16).unwrap();
        MarkMatch { value: n(v) & n(m), mask: n(m) }
    }

    fn table(t: &str) -> u32 {
        match t {
            "main" => RT_TABLE_MAIN,
            "local" => RT_TABLE_LOCAL,
            "default" => RT_TABLE_DEFAULT,
            n => n.parse().unwrap(),
        }
    }

    /// `ip rule` in iproute2's words: `PRIO [not] [from P] [to P] [iif X] [oif X]
    /// [fwmark V/M] [tos N] ACTION [suppress_prefixlength N]`.
    fn rule(line: &str) -> Rule {
        let w: Vec<&str> = line.split_whitespace().collect();
        let family = if line.contains(':') { AddressFamily::Ipv6 } else { AddressFamily::Ipv4 };
        let mut r = default_rules(family).remove(0);
        r.priority = w[0].parse().unwrap();
        let mut i = 1;
        while i < w.len() {
            let arg = w.get(i + 1).copied().unwrap_or("");
            let prefix = |s: &str| {
                let (a, l) = s.split_once('/').unwrap();
                Prefix { addr: ip(a), len: l.parse().unwrap() }
            };
            i += match w[i] {
                "not" => {
                    r.invert = true;
                    1
                }
                "from" => {
                    r.src = Some(prefix(arg));
                    2
                }
                "to" => {
                    r.dst = Some(prefix(arg));
                    2
                }
                "iif" => {
                    r.iif = Some(arg.into());
                    2
                }
                "oif" => {
                    r.oif = Some(arg.into());
                    2
                }
                "fwmark" => {
                    r.fwmark = mark(arg);
                    2
                }
                "tos" | "ipproto" | "dport" => {
                    r.opaque = true;
                    2
                }
                "lookup" => {
                    r.action = RuleAction::Lookup(table(arg));
                    2
                }
                "goto" => {
                    r.action = RuleAction::Goto(arg.parse().unwrap());
                    2
                }
                "nop" => {
                    r.action = RuleAction::Nop;
                    1
                }
                "blackhole" | "unreachable" | "prohibit" => {
                    r.action = RuleAction::Drop;
                    1
                }
                "suppress_prefixlength" => {
                    r.suppress_prefixlen = Some(arg.parse().unwrap());
                    2
                }
                "suppress_ifgroup" => {
                    r.suppress_ifgroup = true;
                    2
                }
                other => panic!("rule word {other}"),
            };
        }
        r
    }

    /// `TABLE default|local ADDR [via A [via B...]] [metric N] [blackhole|unreachable|throw]`.
    fn route(line: &str) -> Route {
        let w: Vec<&str> = line.split_whitespace().collect();
        let mut r = Route {
            family: if line.contains(':') { AddressFamily::Ipv6 } else { AddressFamily::Ipv4 },
            table: table(w[0]),
            dst: None,
            gateways: vec![],
            oif: None,
            priority: None,
            kind: RouteKind::Unicast,
        };
        let mut i = 1;
        while i < w.len() {
            match w[i] {
                "default" => {}
                "local" => {
                    r.kind = RouteKind::Other(RTN_LOCAL);
                    r.dst = Some(Prefix::host(ip(w[i + 1])));
                    i += 1;
                }
                "via" => {
                    r.gateways.push(ip(w[i + 1]));
                    i += 1;
                }
                "metric" => {
                    r.priority = Some(w[i + 1].parse().unwrap());
                    i += 1;
                }
                "blackhole" | "unreachable" | "prohibit" => r.kind = RouteKind::Drop,
                "throw" => r.kind = RouteKind::Throw,
                other => panic!("route word {other}"),
            }
            i += 1;
        }
        if line.contains(" ::") || r.family == AddressFamily::Ipv6 && r.dst.is_none() {
            r.family = AddressFamily::Ipv6;
        }
        r
    }

    const A: &str = "198.51.100.254"; // fibre, interface eth1, mwan3 id 1
    const B: &str = "203.0.113.254"; // cable, eth2, id 2
    const C: &str = "198.18.7.254"; // lte, wwan0, id 3

    /// The kernel's own three rules.
    const PLAIN: &[&str] = &["0 lookup local", "32766 lookup main", "32767 lookup default"];

    /// mwan3's rules for three interfaces with its default mask 0x3f00 (`mwan3_create_iface_
    /// rules`, `mwan3_set_general_rules`: ids 1..3, blackhole 61, unreachable 62).
    fn mwan3_rules(ids: &[u32]) -> Vec<String> {
        let mut v: Vec<String> = vec!["0 lookup local".into()];
        let dev = ["", "eth1", "eth2", "wwan0"];
        for &id in ids {
            let d = dev[id as usize];
            v.push(format!("{} iif {d} lookup {id}", 1000 + id));
            v.push(format!("{} fwmark {:#x}/0x3f00 lookup {id}", 2000 + id, id << 8));
            v.push(format!("{} fwmark {:#x}/0x3f00 unreachable", 3000 + id, id << 8));
        }
        v.push("2061 fwmark 0x3d00/0x3f00 blackhole".into());
        v.push("2062 fwmark 0x3e00/0x3f00 unreachable".into());
        v.push("32766 lookup main".into());
        v.push("32767 lookup default".into());
        v
    }

    fn mwan3_routes() -> Vec<String> {
        vec![
            format!("1 default via {A}"),
            format!("2 default via {B}"),
            format!("3 default via {C}"),
            // netifd's default routes in main, by interface metric.
            format!("main default via {A} metric 10"),
            format!("main default via {B} metric 20"),
            format!("main default via {C} metric 30"),
            "local local 198.51.100.10".into(),
            "local local 203.0.113.10".into(),
        ]
    }

    fn snap(rules: &[impl AsRef<str>], routes: &[impl AsRef<str>]) -> Snapshot {
        Snapshot::new(
            rules.iter().map(|r| rule(r.as_ref())).collect(),
            routes.iter().map(|r| route(r.as_ref())).collect(),
        )
    }

    fn ifaces() -> Vec<String> {
        vec!["eth1".into(), "eth2".into(), "wwan0".into()]
    }

    /// Outcomes in short: `A`, `B`, `C` (or `A+B` for multipath) with the table, `drop`,
    /// `none`; sorted, comma-separated.
    fn short(out: &[Outcome]) -> String {
        let name = |g: &IpAddr| match g.to_string().as_str() {
            x if x == A => "A".to_owned(),
            x if x == B => "B".to_owned(),
            x if x == C => "C".to_owned(),
            x => x.to_owned(),
        };
        let mut v: Vec<String> = out
            .iter()
            .map(|o| match o {
                Outcome::Via { table, gateways } => {
                    let g: Vec<String> = gateways.iter().map(name).collect();
                    format!("{}@{table}", if g.is_empty() { "dev".into() } else { g.join("+") })
                }
                Outcome::Dropped => "drop".into(),
                Outcome::NoRoute => "none".into(),
            })
            .collect();
        v.sort();
        v.join(",")
    }

    /// A walk case: name, rules, routes, flow's mark, outcomes.
    type Case<'a> = (&'a str, Vec<String>, Vec<String>, &'a str, &'a str);

    /// Table-driven: (case, rules, routes, flow's mark ("" = as `flow_for` picks for
    /// fibre's mark 0x100/0x3f00, "-" = unmarked), where the kernel may send it).
    #[test]
    fn walks() {
        let m = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
        let mw = mwan3_rules(&[1, 2, 3]);
        let mr = mwan3_routes();
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            // Plain default-route switching (today's behaviour).
            ("main via A", m(PLAIN), m(&[&format!("main default via {A}")]), "-", "A@254"),
            ("main moved to B", m(PLAIN), m(&[&format!("main default via {B}")]), "-", "B@254"),
            ("no rules listed: the kernel's three", vec![], m(&[&format!("main default via {A}")]), "-", "A@254"),
            ("lowest metric wins", m(PLAIN),
                m(&[&format!("main default via {A} metric 20"), &format!("main default via {B} metric 10")]), "-", "B@254"),
            ("equal metrics: both", m(PLAIN),
                m(&[&format!("main default via {A} metric 10"), &format!("main default via {B} metric 10")]), "-", "A@254,B@254"),
            ("multipath: every next hop", m(PLAIN), m(&[&format!("main default via {A} via {B}")]), "-", "A+B@254"),
            ("empty main falls to table default", m(PLAIN), m(&[&format!("253 default via {C}")]), "-", "C@253"),
            ("no route at all", m(PLAIN), m(&[&format!("7 default via {C}")]), "-", "none"),
            ("blackhole default", m(PLAIN), m(&["main default blackhole"]), "-", "drop"),
            ("throw goes on to the next rule", m(PLAIN),
                m(&["main default throw", &format!("253 default via {C}")]), "-", "C@253"),
            ("per-WAN table for the probes' source is not the LAN's",
                m(&["0 lookup local", "100 from 198.51.100.10/32 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}"), "local local 198.51.100.10"]), "-", "B@254"),
            ("a LAN source rule may match: both ways",
                m(&["0 lookup local", "1000 from 192.0.2.11/32 lookup 102", "32766 lookup main"]),
                m(&[&format!("102 default via {B}"), &format!("main default via {A}")]), "-", "A@254,B@102"),
            ("iif of a gateway interface or lo never matches forwarded",
                m(&["10 iif eth1 lookup 1", "11 iif lo lookup 1", "12 oif eth1 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "B@254"),
            ("iif of a LAN interface may match",
                m(&["10 iif lan0 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "A@1,B@254"),
            ("not iif eth1 always matches forwarded",
                m(&["10 not iif eth1 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "A@1"),
            ("opaque selectors: both ways",
                m(&["10 tos 0x10 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "A@1,B@254"),
            ("to a prefix: both ways",
                m(&["10 to 192.0.2.0/24 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "A@1,B@254"),
            ("suppress_prefixlength 0 never yields a default route",
                m(&["10 lookup main suppress_prefixlength 0", "20 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {B}"), &format!("main default via {A}")]), "-", "B@1"),
            ("suppress_prefixlength keeps a dropping route",
                m(&["10 lookup main suppress_prefixlength 0", "20 lookup 1"]),
                m(&["main default unreachable", &format!("1 default via {B}")]), "-", "drop"),
            ("suppress_ifgroup: both ways",
                m(&["10 lookup main suppress_ifgroup 5", "20 lookup 1"]),
                m(&[&format!("main default via {A}"), &format!("1 default via {B}")]), "-", "A@254,B@1"),
            ("goto skips to its target",
                m(&["10 goto 30", "20 lookup 1", "30 lookup 2"]),
                m(&[&format!("1 default via {A}"), &format!("2 default via {B}")]), "-", "B@2"),
            ("goto to nothing is passed over",
                m(&["10 goto 25", "20 lookup 1", "30 lookup 2"]),
                m(&[&format!("1 default via {A}"), &format!("2 default via {B}")]), "-", "A@1"),
            ("nop is passed over", m(&["10 nop", "20 lookup 2"]), m(&[&format!("2 default via {B}")]), "-", "B@2"),
            ("unreachable rule", m(&["10 unreachable", "20 lookup 2"]), m(&[&format!("2 default via {B}")]), "-", "drop"),
            ("unmarked passes fwmark rules",
                m(&["10 fwmark 0x1 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "B@254"),
            ("not fwmark matches unmarked",
                m(&["10 not fwmark 0x1 lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "-", "A@1"),
            // mwan3's layout: fibre's mark 0x100/0x3f00 goes to table 1.
            ("mwan3: fibre's mark to table 1", mw.clone(), mr.clone(), "", "A@1"),
            ("mwan3: unreachable once table 1 is empty (3001)", mw.clone(),
                mr.iter().filter(|r| !r.starts_with("1 ")).cloned().collect(), "", "drop"),
            ("mwan3 ifdown (rules and table gone): main's next default", mwan3_rules(&[2, 3]),
                mr.iter().filter(|r| !r.starts_with("1 ") && !r.contains("metric 10")).cloned().collect(), "", "B@254"),
            ("mwan3 ifdown while main keeps A: still A", mwan3_rules(&[2, 3]),
                mr.iter().filter(|r| !r.starts_with("1 ")).cloned().collect(), "", "A@254"),
            ("mwan3: cable's mark", mw.clone(), mr.clone(), "0x200/0x3f00", "B@2"),
            ("mwan3: blackhole mark", mw.clone(), mr.clone(), "0x3d00/0x3f00", "drop"),
            ("mwan3: default mark 0x3f00 to main", mw.clone(), mr.clone(), "0x3f00/0x3f00", "A@254"),
            ("mark bits unknown outside the mask: a rule on them may match",
                m(&["10 fwmark 0x1/0xff lookup 1", "32766 lookup main"]),
                m(&[&format!("1 default via {A}"), &format!("main default via {B}")]), "0x100/0x3f00", "A@1,B@254"),
            ("a rule on a different value of the same bits never matches",
                m(&["10 fwmark 0x200/0xff00 lookup 2", "32766 lookup main"]),
                m(&[&format!("2 default via {A}"), &format!("main default via {B}")]), "0x100/0x3f00", "B@254"),
            ("IPv6 rules and routes are their own",
                m(&["0 lookup local", "32766 lookup main", "2001 fwmark 0x100/0x3f00 lookup 1 ::"]),
                m(&["main default via 2001:db8::1", &format!("main default via {A}")]), "-", "A@254"),
        ];
        for (name, rules, routes, flow_mark, want) in cases {
            let rules: Vec<String> = rules.into_iter().filter(|r| !r.ends_with(" ::")).collect();
            let s = snap(&rules, &routes);
            let flow = match flow_mark {
                "-" => Flow::unmarked(AddressFamily::Ipv4, ifaces()),
                "" => s.flow_for(AddressFamily::Ipv4, Some(mark("0x100/0x3f00")), ifaces()),
                m => Flow { family: AddressFamily::Ipv4, mark: mark(m), not_from: ifaces() },
            };
            assert_eq!(short(&s.outcomes(&flow)), want, "{name}");
        }
    }

    #[test]
    fn moved_and_used() {
        let fibre = Some(mark("0x100/0x3f00"));
        let (a, b) = (ip(A), ip(B));
        // mwan3 with everything up: fibre's connections go to fibre.
        let s = snap(&mwan3_rules(&[1, 2, 3]), &mwan3_routes());
        let flow = s.flow_for(AddressFamily::Ipv4, fibre, ifaces());
        assert_eq!(flow.mark, mark("0x100/0x3f00"), "routing selects on the mark");
        assert!(!s.moved_off(&flow, a) && s.uses(&flow, a) && !s.uses(&flow, b));
        // mwan3 `ifdown fibre` as netifd and mwan3 leave it: moved.
        let routes: Vec<String> = mwan3_routes()
            .into_iter()
            .filter(|r| !r.starts_with("1 ") && !r.contains(&format!("via {A}")))
            .collect();
        let s = snap(&mwan3_rules(&[2, 3]), &routes);
        let flow = s.flow_for(AddressFamily::Ipv4, fibre, ifaces());
        assert!(s.moved_off(&flow, a) && !s.uses(&flow, a));
        // Without fwmark rules the mark is set after routing: the flow is unmarked.
        let s = snap(PLAIN, &[format!("main default via {A}")]);
        let flow = s.flow_for(AddressFamily::Ipv4, fibre, ifaces());
        assert_eq!(flow, Flow::unmarked(AddressFamily::Ipv4, ifaces()));
        assert!(!s.moved_off(&flow, a));
        let s = snap(PLAIN, &[format!("main default via {B}")]);
        assert!(s.moved_off(&flow, a) && s.uses(&flow, b));
        // A gateway without a mark is routed as unmarked.
        assert_eq!(
            s.flow_for(AddressFamily::Ipv4, None, vec![]),
            Flow::unmarked(AddressFamily::Ipv4, vec![])
        );
    }

    /// Every rule order and every subset of a rule set give the same answer as a brute-force
    /// walk that forks on every "maybe" (no memo), and the answer never depends on the
    /// order the rules were listed in.
    #[test]
    fn memo_agrees_with_brute_force() {
        let pool = [
            "5 from 192.0.2.0/24 lookup 1",
            "6 fwmark 0x100/0x3f00 lookup 2",
            "7 goto 40",
            "8 tos 0x10 unreachable",
            "9 lookup main suppress_prefixlength 0",
            "10 not fwmark 0x200/0x3f00 lookup 3",
            "20 iif lan0 nop",
            "30 lookup 1",
            "40 lookup 2",
            "32766 lookup main",
        ];
        let routes = [
            format!("1 default via {A}"),
            format!("2 default via {B}"),
            "3 default blackhole".to_string(),
            format!("main default via {C}"),
        ];
        fn brute(s: &Snapshot, rules: &[&Rule], flow: &Flow, i: usize, out: &mut Vec<Outcome>) {
            let Some(r) = rules.get(i) else {
                out.push(Outcome::NoRoute);
                return;
            };
            let m = s.matches(r, flow);
            if m != Tri::Yes {
                brute(s, rules, flow, i + 1, out);
            }
            if m == Tri::No {
                return;
            }
            match r.action {
                RuleAction::Lookup(t) => match s.lookup(flow.family, t) {
                    None => brute(s, rules, flow, i + 1, out),
                    Some(_) if r.suppress_prefixlen.is_some() => brute(s, rules, flow, i + 1, out),
                    Some(found) => out.extend(found),
                },
                RuleAction::Goto(p) => {
                    match rules.iter().position(|x| x.priority == p).filter(|j| *j > i) {
                        Some(j) => brute(s, rules, flow, j, out),
                        None => brute(s, rules, flow, i + 1, out),
                    }
                }
                RuleAction::Nop => brute(s, rules, flow, i + 1, out),
                _ => out.push(Outcome::Dropped),
            }
        }
        for subset in 0u32..(1 << pool.len()) {
            let chosen: Vec<&str> = pool
                .iter()
                .enumerate()
                .filter(|(i, _)| subset & (1 << i) != 0)
                .map(|(_, r)| *r)
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let s = snap(&chosen, &routes);
            let mut reversed = chosen.clone();
            reversed.reverse();
            let r = snap(&reversed, &routes);
            for mk in ["0x100/0x3f00", "0x200/0x3f00", "0x0/0xffffffff", "0x0/0x0"] {
                let flow = Flow { family: AddressFamily::Ipv4, mark: mark(mk), not_from: ifaces() };
                let got = s.outcomes(&flow);
                assert_eq!(got, r.outcomes(&flow), "order matters for {chosen:?}");
                let rules: Vec<&Rule> = s.rules().iter().collect();
                let mut want = Vec::new();
                brute(&s, &rules, &flow, 0, &mut want);
                want.sort();
                want.dedup();
                assert_eq!(got, want, "{chosen:?} {mk}");
            }
        }
    }

    /// An `RTM_NEWRULE` message as the kernel sends it: header, `fib_rule_hdr`, attributes.
    fn rule_msg(hdr: [u8; 8], flags: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = hdr.to_vec();
        body.extend_from_slice(&flags.to_ne_bytes());
        for (kind, value) in attrs {
            body.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(statecull_netlink::align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&RTM_NEWRULE.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn u32v(v: u32) -> Vec<u8> {
        v.to_ne_bytes().to_vec()
    }

    fn decode(buf: &[u8]) -> Result<Vec<Rule>, EngineError> {
        super::super::fuzzing::decode_rules(buf, None)
    }

    #[test]
    fn rule_messages() {
        // `2001: from all fwmark 0x100/0x3f00 lookup 1` (mwan3), as iproute2 asks for it.
        let mwan3 = rule_msg(
            [AF_INET, 0, 0, 0, 1, 0, 0, 1],
            0,
            &[
                (FRA_TABLE, u32v(1)),
                (FRA_PRIORITY, u32v(2001)),
                (FRA_FWMARK, u32v(0x100)),
                (FRA_FWMASK, u32v(0x3f00)),
                (21, vec![3]), // FRA_PROTOCOL: who made it, not a selector
            ],
        );
        let r = decode(&mwan3).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].priority, 2001);
        assert_eq!(r[0].action, RuleAction::Lookup(1));
        assert_eq!(r[0].fwmark, mark("0x100/0x3f00"));
        assert!(!r[0].opaque && !r[0].invert);
        // `not from 192.0.2.0/24 iif lan0 fwmark 0x1 goto 3000`, IPv6 `unreachable` with a
        // big table number, `suppress_prefixlength 0` (and -1 meaning "none").
        let mut lan = b"lan0".to_vec();
        lan.push(0);
        let mut buf = rule_msg(
            [AF_INET, 0, 24, 0, 0, 0, 0, 2],
            FIB_RULE_INVERT,
            &[
                (FRA_SRC, vec![192, 0, 2, 0]),
                (FRA_IIFNAME, lan),
                (FRA_FWMARK, u32v(1)),
                (FRA_GOTO, u32v(3000)),
                (FRA_PRIORITY, u32v(10)),
            ],
        );
        buf.extend(rule_msg([AF_INET6, 0, 0, 0, 0, 0, 0, 7], 0, &[(FRA_TABLE, u32v(1000))]));
        buf.extend(rule_msg(
            [AF_INET, 0, 0, 0, 254, 0, 0, 1],
            0,
            &[(FRA_SUPPRESS_PREFIXLEN, u32v(0)), (FRA_SUPPRESS_IFGROUP, u32v(u32::MAX))],
        ));
        buf.extend(rule_msg(
            [AF_INET, 0, 0, 0, 254, 0, 0, 1],
            0,
            &[(FRA_SUPPRESS_PREFIXLEN, u32v(u32::MAX)), (FRA_DPORT_RANGE, vec![0; 4])],
        ));
        buf.extend(rule_msg([7, 0, 0, 0, 0, 0, 0, 1], 0, &[])); // another family: skipped
        let r = decode(&buf).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r[0].invert);
        assert_eq!(r[0].src, Some(Prefix { addr: "192.0.2.0".parse().unwrap(), len: 24 }));
        assert_eq!(r[0].iif.as_deref(), Some("lan0"));
        assert_eq!(r[0].fwmark, mark("0x1/0xffffffff"), "a mark without a mask is all bits");
        assert_eq!(r[0].action, RuleAction::Goto(3000));
        assert_eq!(r[1].family, AddressFamily::Ipv6);
        assert_eq!(r[1].action, RuleAction::Drop);
        assert_eq!(r[2].suppress_prefixlen, Some(0));
        assert!(!r[2].suppress_ifgroup);
        assert_eq!(r[3].suppress_prefixlen, None);
        assert!(r[3].opaque, "port ranges are not known for a new connection");
        // Truncations and nonsense are errors, never a panic or a silent rule.
        for cut in 1..mwan3.len() {
            assert!(decode(&mwan3[..cut]).is_err(), "cut at {cut}");
        }
        for bad in [
            rule_msg([AF_INET, 0, 0, 0, 0, 0, 0, 2], 0, &[]), // goto without a target
            rule_msg([AF_INET, 0, 33, 0, 0, 0, 0, 1], 0, &[(FRA_SRC, vec![0; 4])]),
            rule_msg([AF_INET, 0, 8, 0, 0, 0, 0, 1], 0, &[]), // /8 without its address
            rule_msg([AF_INET, 0, 8, 0, 0, 0, 0, 1], 0, &[(FRA_SRC, vec![0; 16])]),
            rule_msg([AF_INET, 0, 0, 0, 0, 0, 0, 1], 0, &[(FRA_PRIORITY, vec![1, 2])]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }

    /// The shipped mwan3 example's marks are mwan3's (ids 1..3 under 0x3f00): with mwan3's
    /// rules each uplink's connections are routed by its own table, and once mwan3 has taken
    /// an interface down (rules and table gone, netifd's default route gone) its
    /// connections have moved. With the old `0x1/0xff` marks no rule would select on them.
    #[test]
    fn the_mwan3_example_policy_matches_mwan3s_rules() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../policy/examples/linux-mwan-three-wan.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let policy = statecull_policy::load::parse(&text, path).unwrap();
        let wans: Vec<String> = policy.gateways.iter().map(|g| g.interface.0.clone()).collect();
        let s = snap(&mwan3_rules(&[1, 2, 3]), &mwan3_routes());
        for (table, gw) in (1u32..).zip(&policy.gateways) {
            let flow = s.flow_for(gw.family, gw.states.mark, wans.clone());
            assert_eq!(flow.mark, gw.states.mark.unwrap(), "{}: routed by its mark", gw.name);
            assert_eq!(
                s.outcomes(&flow),
                vec![Outcome::Via { table, gateways: vec![gw.address] }],
                "{}",
                gw.name
            );
        }
        let fibre = &policy.gateways[0];
        let routes: Vec<String> = mwan3_routes()
            .into_iter()
            .filter(|r| !r.starts_with("1 ") && !r.contains(&format!("via {}", fibre.address)))
            .collect();
        let s = snap(&mwan3_rules(&[2, 3]), &routes);
        let flow = s.flow_for(fibre.family, fibre.states.mark, wans.clone());
        assert!(s.moved_off(&flow, fibre.address));
        // The old marks: not selected by mwan3's rules, so routed as unmarked, by main.
        let old = s.flow_for(fibre.family, Some(mark("0x1/0xff")), wans);
        assert_eq!(old, Flow::unmarked(fibre.family, old.not_from.clone()));
    }
}
